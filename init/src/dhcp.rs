//! DHCP (RFC 2131) messages, just what a client needs to get one lease:
//! DISCOVER and REQUEST out, OFFER, ACK and NAK in. Sockets are the init's job.

use std::net::Ipv4Addr;

pub const CLIENT_PORT: u16 = 68;
pub const SERVER_PORT: u16 = 67;
const MAGIC: [u8; 4] = [99, 130, 83, 99];
const FIXED_LEN: usize = 236;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Discover = 1,
    Offer = 2,
    Request = 3,
    Ack = 5,
    Nak = 6,
}

/// What the server offered or acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub kind: MessageType,
    pub xid: u32,
    pub address: Ipv4Addr,
    /// Option 54, the server identifier.
    pub server: Option<Ipv4Addr>,
    /// `siaddr`, the "next server" of BOOTP (unset when 0.0.0.0).
    pub next_server: Option<Ipv4Addr>,
    pub netmask: Option<Ipv4Addr>,
    pub router: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub lease_seconds: Option<u32>,
}

fn message(kind: MessageType, xid: u32, mac: [u8; 6], extra: &[(u8, Vec<u8>)]) -> Vec<u8> {
    let mut packet = vec![0u8; FIXED_LEN];
    packet[0] = 1; // BOOTREQUEST
    packet[1] = 1; // Ethernet
    packet[2] = 6;
    packet[4..8].copy_from_slice(&xid.to_be_bytes());
    // The broadcast flag: this client has no address yet to take a unicast reply.
    packet[10] = 0x80;
    packet[28..34].copy_from_slice(&mac);
    packet.extend_from_slice(&MAGIC);
    packet.extend_from_slice(&[53, 1, kind as u8]);
    for (code, value) in extra {
        packet.push(*code);
        packet.push(value.len() as u8);
        packet.extend_from_slice(value);
    }
    // Ask for: subnet mask, router, DNS, lease time.
    packet.extend_from_slice(&[55, 4, 1, 3, 6, 51, 255]);
    // Some servers drop BOOTP messages shorter than 300 bytes.
    if packet.len() < 300 {
        packet.resize(300, 0);
    }
    packet
}

pub fn discover(xid: u32, mac: [u8; 6]) -> Vec<u8> {
    message(MessageType::Discover, xid, mac, &[])
}

pub fn request(xid: u32, mac: [u8; 6], offered: Ipv4Addr, server: Option<Ipv4Addr>) -> Vec<u8> {
    let mut extra = vec![(50, offered.octets().to_vec())];
    if let Some(server) = server {
        extra.push((54, server.octets().to_vec()));
    }
    message(MessageType::Request, xid, mac, &extra)
}

fn address(value: &[u8]) -> Option<Ipv4Addr> {
    (value.len() >= 4).then(|| Ipv4Addr::new(value[0], value[1], value[2], value[3]))
}

/// Parse a server's reply. Errors say why a packet is not one for us.
pub fn parse_reply(packet: &[u8]) -> Result<Reply, String> {
    if packet.len() < FIXED_LEN + 4 {
        return Err(format!("{} bytes is too short for DHCP", packet.len()));
    }
    if packet[0] != 2 {
        return Err("not a BOOTREPLY".into());
    }
    if packet[FIXED_LEN..FIXED_LEN + 4] != MAGIC {
        return Err("no DHCP magic cookie".into());
    }
    let xid = u32::from_be_bytes(packet[4..8].try_into().unwrap());
    let yiaddr = address(&packet[16..20]).unwrap();
    let next_server = address(&packet[20..24]).filter(|address| !address.is_unspecified());
    let mut reply = Reply {
        kind: MessageType::Discover,
        xid,
        address: yiaddr,
        server: None,
        next_server,
        netmask: None,
        router: None,
        dns: Vec::new(),
        lease_seconds: None,
    };
    let mut kind = None;
    let mut options = &packet[FIXED_LEN + 4..];
    while let Some((&code, rest)) = options.split_first() {
        match code {
            0 => {
                options = rest;
                continue;
            }
            255 => break,
            _ => {}
        }
        let Some((&len, rest)) = rest.split_first() else { return Err("truncated option".into()) };
        if rest.len() < len as usize {
            return Err(format!("option {code} runs past the packet"));
        }
        let (value, rest) = rest.split_at(len as usize);
        match code {
            53 if len == 1 => {
                kind = Some(match value[0] {
                    2 => MessageType::Offer,
                    5 => MessageType::Ack,
                    6 => MessageType::Nak,
                    other => return Err(format!("DHCP message type {other} is not a reply")),
                })
            }
            1 => reply.netmask = address(value),
            3 => reply.router = address(value),
            6 => reply.dns = value.chunks_exact(4).filter_map(address).collect(),
            51 if len == 4 => reply.lease_seconds = Some(u32::from_be_bytes(value.try_into().unwrap())),
            54 => reply.server = address(value),
            _ => {}
        }
        options = rest;
    }
    reply.kind = kind.ok_or("no DHCP message type")?;
    Ok(reply)
}

impl Reply {
    /// The DHCP server that gave this lease: the server identifier (option
    /// 54), else `siaddr`. What `http://dhcp-server/…` URLs reach.
    pub fn dhcp_server(&self) -> Option<Ipv4Addr> {
        self.server.or(self.next_server)
    }
}

/// The netmask's prefix length (for messages).
pub fn prefix_len(netmask: Ipv4Addr) -> u32 {
    u32::from(netmask).count_ones()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x12, 0x34, 0x56];

    fn option(packet: &[u8], code: u8) -> Option<Vec<u8>> {
        let mut options = &packet[FIXED_LEN + 4..];
        while let [c, len, rest @ ..] = options {
            if *c == 255 {
                return None;
            }
            if *c == code {
                return Some(rest[..*len as usize].to_vec());
            }
            options = &rest[*len as usize..];
        }
        None
    }

    #[test]
    fn discover_and_request_are_well_formed() {
        let packet = discover(0xdeadbeef, MAC);
        assert_eq!(packet.len(), 300);
        assert_eq!(&packet[..3], &[1, 1, 6]);
        assert_eq!(&packet[4..8], &[0xde, 0xad, 0xbe, 0xef]);
        assert_eq!(packet[10], 0x80, "broadcast flag");
        assert_eq!(&packet[28..34], &MAC);
        assert_eq!(option(&packet, 53), Some(vec![1]));
        let packet = request(7, MAC, Ipv4Addr::new(10, 0, 2, 15), Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(option(&packet, 53), Some(vec![3]));
        assert_eq!(option(&packet, 50), Some(vec![10, 0, 2, 15]));
        assert_eq!(option(&packet, 54), Some(vec![10, 0, 2, 2]));
    }

    fn server_reply(kind: u8, options: &[u8]) -> Vec<u8> {
        let mut packet = vec![0u8; FIXED_LEN];
        packet[0] = 2;
        packet[4..8].copy_from_slice(&42u32.to_be_bytes());
        packet[16..20].copy_from_slice(&[10, 0, 2, 15]);
        packet.extend_from_slice(&MAGIC);
        packet.extend_from_slice(&[0, 53, 1, kind]);
        packet.extend_from_slice(options);
        packet.push(255);
        packet
    }

    #[test]
    fn decodes_an_ack_with_its_options() {
        let packet = server_reply(
            5,
            &[
                1, 4, 255, 255, 255, 0, 3, 4, 10, 0, 2, 2, 6, 8, 10, 0, 2, 3, 1, 1, 1, 1, 51, 4, 0, 0, 0x0e, 0x10, 54,
                4, 10, 0, 2, 2,
            ],
        );
        let reply = parse_reply(&packet).unwrap();
        assert_eq!(reply.kind, MessageType::Ack);
        assert_eq!(reply.xid, 42);
        assert_eq!(reply.address, Ipv4Addr::new(10, 0, 2, 15));
        assert_eq!(reply.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(prefix_len(reply.netmask.unwrap()), 24);
        assert_eq!(reply.router, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(reply.dns, vec![Ipv4Addr::new(10, 0, 2, 3), Ipv4Addr::new(1, 1, 1, 1)]);
        assert_eq!(reply.lease_seconds, Some(3600));
        assert_eq!(reply.server, Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(reply.next_server, None);
        assert_eq!(reply.dhcp_server(), Some(Ipv4Addr::new(10, 0, 2, 2)));
    }

    #[test]
    fn the_dhcp_server_is_option_54_else_siaddr() {
        let mut packet = server_reply(5, &[]);
        packet[20..24].copy_from_slice(&[192, 0, 2, 9]);
        let reply = parse_reply(&packet).unwrap();
        assert_eq!((reply.server, reply.next_server), (None, Some(Ipv4Addr::new(192, 0, 2, 9))));
        assert_eq!(reply.dhcp_server(), Some(Ipv4Addr::new(192, 0, 2, 9)));
        let mut packet = server_reply(5, &[54, 4, 10, 0, 2, 2]);
        packet[20..24].copy_from_slice(&[192, 0, 2, 9]);
        assert_eq!(parse_reply(&packet).unwrap().dhcp_server(), Some(Ipv4Addr::new(10, 0, 2, 2)));
        assert_eq!(parse_reply(&server_reply(5, &[])).unwrap().dhcp_server(), None);
    }

    #[test]
    fn refuses_what_is_not_a_reply() {
        assert!(parse_reply(&[0; 10]).unwrap_err().contains("too short"));
        assert!(parse_reply(&discover(1, MAC)).unwrap_err().contains("BOOTREPLY"));
        let mut packet = server_reply(2, &[]);
        assert_eq!(parse_reply(&packet).unwrap().kind, MessageType::Offer);
        packet.truncate(packet.len() - 1);
        packet.extend_from_slice(&[3, 10, 1]);
        assert!(parse_reply(&packet).unwrap_err().contains("runs past"));
        assert!(parse_reply(&server_reply(1, &[])).unwrap_err().contains("not a reply"));
    }
}
