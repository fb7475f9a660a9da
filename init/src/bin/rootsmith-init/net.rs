//! The network for a fetch: pick an interface, bring it up, get a DHCP lease,
//! and set the address, the default route and resolv.conf.

use std::io;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use rootsmith_init::dhcp::{self, MessageType, Reply};

use crate::log;

/// The kernel's `struct ifreq`: the name, then a 24-byte union.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: [u8; 24],
}

/// The kernel's `struct rtentry` on 64-bit Linux.
#[repr(C)]
struct RtEntry {
    pad1: libc::c_ulong,
    dst: libc::sockaddr,
    gateway: libc::sockaddr,
    genmask: libc::sockaddr,
    flags: libc::c_ushort,
    pad2: libc::c_short,
    pad3: libc::c_ulong,
    pad4: *mut libc::c_void,
    metric: libc::c_short,
    dev: *mut libc::c_char,
    mtu: libc::c_ulong,
    window: libc::c_ulong,
    irtt: libc::c_ushort,
}

// The kernel copies exactly `sizeof(struct ifreq)` and `sizeof(struct rtentry)`
// bytes in and out; the structs above must be as large as libc's.
const _: () = assert!(std::mem::size_of::<IfReq>() == std::mem::size_of::<libc::ifreq>());
const _: () = assert!(std::mem::size_of::<RtEntry>() == std::mem::size_of::<libc::rtentry>());

/// An `ifreq` for `name`, which is NUL-terminated (cut to 15 bytes if longer).
fn ifreq(name: &str) -> IfReq {
    let mut request = IfReq { name: [0; libc::IFNAMSIZ], data: [0; 24] };
    let bytes = name.as_bytes();
    request.name[..bytes.len().min(15)].copy_from_slice(&bytes[..bytes.len().min(15)]);
    request
}

fn sockaddr(address: Ipv4Addr) -> libc::sockaddr {
    let inet = libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from(address).to_be() },
        sin_zero: [0; 8],
    };
    // SAFETY: both are 16-byte plain-data structs (transmute checks the sizes
    // at compile time); `sockaddr_in` has no padding, so every byte is
    // initialized, and any bytes are a valid `sockaddr` (integers and arrays).
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(inet) }
}

fn control_socket() -> io::Result<UdpSocket> {
    UdpSocket::bind("0.0.0.0:0")
}

/// Make the socket ioctl `request` on a fresh control socket.
///
/// # Safety
///
/// `request` must be a socket ioctl whose argument is a pointer to a `T`: the
/// kernel reads and writes at most `size_of::<T>()` bytes through it and keeps
/// no pointer to it after the call. Every pointer inside `*data` must be valid
/// for whatever the kernel reads or writes through it during the call.
unsafe fn socket_ioctl<T>(request: libc::c_ulong, data: &mut T, what: &str) -> io::Result<()> {
    let socket = control_socket()?;
    // SAFETY: the socket's fd is open until `socket` drops after the call;
    // `data` is a live, exclusive `T` and the caller guarantees that `request`
    // takes a `T` and what it points to.
    let result = unsafe { libc::ioctl(socket.as_raw_fd(), request, data as *mut T) };
    if result < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(error.kind(), format!("{what}: {error}")));
    }
    Ok(())
}

/// The interface ioctls the init makes: each takes a `struct ifreq`.
#[derive(Clone, Copy)]
enum IfIoctl {
    GetFlags,
    SetFlags,
    SetAddress,
    SetNetmask,
}

fn interface_ioctl(request: IfIoctl, data: &mut IfReq, what: &str) -> io::Result<()> {
    let code = match request {
        IfIoctl::GetFlags => libc::SIOCGIFFLAGS,
        IfIoctl::SetFlags => libc::SIOCSIFFLAGS,
        IfIoctl::SetAddress => libc::SIOCSIFADDR,
        IfIoctl::SetNetmask => libc::SIOCSIFNETMASK,
    };
    // SAFETY: these four requests take a pointer to a `struct ifreq`, which
    // `IfReq` matches (the size is asserted above); the kernel copies the
    // whole struct in (and, for SIOCGIFFLAGS, back out) and follows no
    // pointer inside it: the name is an inline array.
    unsafe { socket_ioctl(code, data, what) }
}

pub fn set_up(name: &str) -> io::Result<()> {
    let mut request = ifreq(name);
    interface_ioctl(IfIoctl::GetFlags, &mut request, &format!("reading the flags of {name}"))?;
    let flags = u16::from_ne_bytes([request.data[0], request.data[1]]) | libc::IFF_UP as u16;
    request.data[..2].copy_from_slice(&flags.to_ne_bytes());
    interface_ioctl(IfIoctl::SetFlags, &mut request, &format!("bringing {name} up"))
}

fn set_address(name: &str, request_code: IfIoctl, address: Ipv4Addr, what: &str) -> io::Result<()> {
    let mut request = ifreq(name);
    let raw = sockaddr(address);
    // SAFETY: `sockaddr` is 16 bytes (transmute checks) with no padding, a
    // `u16` and a byte array, so all 16 bytes are initialized.
    let bytes: [u8; 16] = unsafe { std::mem::transmute(raw) };
    request.data[..16].copy_from_slice(&bytes);
    interface_ioctl(request_code, &mut request, what)
}

fn add_default_route(name: &str, gateway: Ipv4Addr) -> io::Result<()> {
    // The kernel copies IFNAMSIZ - 1 bytes from `rt_dev` whatever the name's
    // length, so it points to a whole NUL-padded IFNAMSIZ buffer.
    let mut device = ifreq(name).name;
    let mut route = RtEntry {
        pad1: 0,
        dst: sockaddr(Ipv4Addr::UNSPECIFIED),
        gateway: sockaddr(gateway),
        genmask: sockaddr(Ipv4Addr::UNSPECIFIED),
        flags: (libc::RTF_UP | libc::RTF_GATEWAY),
        pad2: 0,
        pad3: 0,
        pad4: std::ptr::null_mut(),
        metric: 0,
        dev: device.as_mut_ptr().cast(),
        mtu: 0,
        window: 0,
        irtt: 0,
    };
    // SAFETY: SIOCADDRT takes a pointer to a `struct rtentry`, which `RtEntry`
    // matches (the size is asserted above). Its one pointer, `dev`, points to
    // `device`, IFNAMSIZ bytes that outlive the call, of which the kernel
    // reads IFNAMSIZ - 1; the other pointer field is null.
    unsafe { socket_ioctl(libc::SIOCADDRT, &mut route, &format!("adding the default route via {gateway}")) }
}

/// A sysfs attribute of `name`, empty if it cannot be read: `carrier` fails
/// (EINVAL) while an interface is down, which means no link yet.
fn read_sys(name: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{name}/{file}")).unwrap_or_default().trim().to_string()
}

fn interfaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name != "lo")
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The interface to use: the one named, or the first with a link. Interfaces
/// appear as their drivers probe, so this waits up to `wait`.
pub fn choose_interface(named: Option<&str>, wait: Duration) -> io::Result<String> {
    let started = Instant::now();
    // Best effort: the fetch talks to other hosts only, so a boot without a
    // loopback interface works; say so and carry on.
    if let Err(error) = set_up("lo") {
        log!("{error} (continuing without the loopback interface)");
    }
    let mut raised = Vec::new();
    loop {
        let candidates = match named {
            Some(name) => interfaces().into_iter().filter(|n| n == name).collect(),
            None => interfaces(),
        };
        for name in &candidates {
            if !raised.contains(name) {
                set_up(name)?;
                raised.push(name.clone());
            }
            if read_sys(name, "carrier") == "1" {
                return Ok(name.clone());
            }
        }
        if started.elapsed() > wait {
            let seen = interfaces();
            let message = match named {
                Some(name) if !seen.contains(&name.to_string()) => format!(
                    "no network interface {name} (there are: {})",
                    if seen.is_empty() { "none".into() } else { seen.join(", ") }
                ),
                Some(name) => format!("{name} has no link"),
                None if seen.is_empty() => {
                    "no network interface appeared; is the NIC's driver in the initramfs (outputs.initramfs.modules)?"
                        .into()
                }
                None => format!("no interface has a link (tried {})", seen.join(", ")),
            };
            return Err(io::Error::new(io::ErrorKind::NotFound, message));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn mac(name: &str) -> io::Result<[u8; 6]> {
    let path = format!("/sys/class/net/{name}/address");
    let text = std::fs::read_to_string(&path)
        .map_err(|error| io::Error::new(error.kind(), format!("reading {path}: {error}")))?;
    let mut mac = [0u8; 6];
    for (byte, part) in mac.iter_mut().zip(text.trim().split(':')) {
        *byte = u8::from_str_radix(part, 16).unwrap_or(0);
    }
    Ok(mac)
}

fn exchange(
    socket: &UdpSocket,
    packet: &[u8],
    xid: u32,
    want: &[MessageType],
    timeout: Duration,
) -> io::Result<Option<Reply>> {
    socket.send_to(packet, SocketAddrV4::new(Ipv4Addr::BROADCAST, dhcp::SERVER_PORT))?;
    let deadline = Instant::now() + timeout;
    let mut buffer = [0u8; 1500];
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        socket.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        match socket.recv_from(&mut buffer) {
            Ok((len, _)) => {
                if let Ok(reply) = dhcp::parse_reply(&buffer[..len]) {
                    if reply.xid == xid && want.contains(&reply.kind) {
                        return Ok(Some(reply));
                    }
                }
            }
            Err(error) if matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => break,
            Err(error) => return Err(error),
        }
    }
    Ok(None)
}

/// DISCOVER, OFFER, REQUEST, ACK, with retries that back off.
pub fn lease(name: &str) -> io::Result<Reply> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, dhcp::CLIENT_PORT))?;
    socket.set_broadcast(true)?;
    let device = name.as_bytes();
    // SAFETY: the socket's fd is open for the call; the option value points to
    // `device.len()` readable bytes (the kernel copies at most that many, and
    // at most IFNAMSIZ - 1, and needs no NUL), borrowed across the call.
    let result = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            device.as_ptr().cast(),
            device.len() as libc::socklen_t,
        )
    };
    if result < 0 {
        let error = io::Error::last_os_error();
        return Err(io::Error::new(error.kind(), format!("binding the DHCP socket to {name}: {error}")));
    }
    let mac = mac(name)?;
    let mut timeout = Duration::from_secs(1);
    for attempt in 1..=8u32 {
        let xid = u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]) ^ attempt.wrapping_mul(0x9e37_79b9);
        if let Some(offer) = exchange(&socket, &dhcp::discover(xid, mac), xid, &[MessageType::Offer], timeout)? {
            let request = dhcp::request(xid, mac, offer.address, offer.server);
            match exchange(&socket, &request, xid, &[MessageType::Ack, MessageType::Nak], timeout)? {
                Some(reply) if reply.kind == MessageType::Ack => return Ok(reply),
                Some(_) => log!("DHCP server refused the offer of {}; starting over", offer.address),
                None => {}
            }
        }
        log!("no DHCP answer on {name} (attempt {attempt}), retrying");
        timeout = (timeout * 2).min(Duration::from_secs(8));
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, format!("no DHCP lease on {name} after 8 attempts")))
}

/// Set the lease's address, route and DNS servers.
pub fn configure(name: &str, lease: &Reply) -> io::Result<()> {
    let netmask = lease.netmask.unwrap_or(Ipv4Addr::new(255, 255, 255, 0));
    set_address(name, IfIoctl::SetAddress, lease.address, &format!("setting {} on {name}", lease.address))?;
    set_address(name, IfIoctl::SetNetmask, netmask, &format!("setting netmask {netmask} on {name}"))?;
    if let Some(router) = lease.router {
        add_default_route(name, router)?;
    }
    if !lease.dns.is_empty() {
        std::fs::create_dir_all("/etc")?;
        let text: String = lease.dns.iter().map(|server| format!("nameserver {server}\n")).collect();
        std::fs::write("/etc/resolv.conf", text)?;
    }
    log!(
        "{name}: {}/{} via {}, DNS {}",
        lease.address,
        dhcp::prefix_len(netmask),
        lease.router.map(|r| r.to_string()).unwrap_or_else(|| "no router".into()),
        if lease.dns.is_empty() {
            "none".into()
        } else {
            lease.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" ")
        }
    );
    Ok(())
}
