# Runs chrooted in the tree after the overlay stage (sh -e).
echo "$HOSTNAME" > /etc/hostname
# An empty root password for the console of a lab image; a real recipe sets keys.
passwd -d root
systemctl enable rootsmith-marker.service
# A machine id is made at first boot, not baked into every copy of the image.
: > /etc/machine-id
