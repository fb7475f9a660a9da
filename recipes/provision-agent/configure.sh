# Runs chrooted in the tree after the overlay stage (sh -e).
echo provision-agent > /etc/hostname
chmod 0755 /usr/local/sbin/rootsmith-agent
systemctl enable rootsmith-agent.service
# The agent owns the console; a login prompt on it would only interleave.
systemctl mask serial-getty@ttyS0.service getty@tty1.service
: > /etc/machine-id
