//! A small synchronous rtnetlink client: the link, address and route
//! requests netlab makes, and the XDP query of a link.
//!
//! A netlink socket talks to the network namespace of the thread that
//! created it, for its whole life: [`Rtnl::open`] is called on a thread that
//! entered the namespace to configure ([`crate::Netns::run_in`]). Every
//! request asks for an acknowledgement, so an error from the kernel comes
//! back as the request's `io::Error` (its errno), never silently.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, LinkXdp,
    XdpAttached,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// How an XDP program is attached to a link (IFLA_XDP_ATTACHED).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAttachMode {
    /// In the driver (XDP_ATTACHED_DRV; veth's native mode).
    Driver,
    /// Generic, on the socket buffer (XDP_ATTACHED_SKB).
    Generic,
    /// Offloaded to the device (XDP_ATTACHED_HW).
    Offload,
}

impl std::fmt::Display for XdpAttachMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            XdpAttachMode::Driver => "driver",
            XdpAttachMode::Generic => "generic",
            XdpAttachMode::Offload => "offload",
        })
    }
}

/// One XDP program attached to a link, as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpAttachment {
    pub prog_id: u32,
    pub mode: XdpAttachMode,
}

/// A route-netlink socket bound to the calling thread's namespace.
pub(crate) struct Rtnl {
    socket: Socket,
    sequence: u32,
}

impl Rtnl {
    pub(crate) fn open() -> io::Result<Rtnl> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Rtnl {
            socket,
            sequence: 0,
        })
    }

    /// Creates a veth pair: `name` here, `peer` in the namespace `peer_netns`
    /// refers to (created there directly, never visible here).
    pub(crate) fn add_veth(&mut self, name: &str, peer: &str, peer_netns: RawFd) -> io::Result<()> {
        let mut peer_message = LinkMessage::default();
        peer_message.attributes = vec![
            LinkAttribute::IfName(peer.to_string()),
            LinkAttribute::NetNsFd(peer_netns),
        ];
        let mut message = LinkMessage::default();
        message.attributes = vec![
            LinkAttribute::IfName(name.to_string()),
            LinkAttribute::LinkInfo(vec![
                LinkInfo::Kind(InfoKind::Veth),
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_message))),
            ]),
        ];
        self.request(
            RouteNetlinkMessage::NewLink(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Moves link `index` into the namespace `netns` refers to.
    pub(crate) fn move_link(&mut self, index: u32, netns: RawFd) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.attributes = vec![LinkAttribute::NetNsFd(netns)];
        self.request(RouteNetlinkMessage::SetLink(message), 0)
            .map(drop)
    }

    /// Sets link `index` administratively up.
    pub(crate) fn set_up(&mut self, index: u32) -> io::Result<()> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        message.header.flags = LinkFlags::Up;
        message.header.change_mask = LinkFlags::Up;
        self.request(RouteNetlinkMessage::SetLink(message), 0)
            .map(drop)
    }

    /// Whether link `index` is administratively up.
    pub(crate) fn is_up(&mut self, index: u32) -> io::Result<bool> {
        Ok(self.link(index)?.header.flags.contains(LinkFlags::Up))
    }

    /// Adds `address/prefix_len` to link `index` (as `ip addr add` does:
    /// local and peer address the same).
    pub(crate) fn add_address(
        &mut self,
        index: u32,
        address: Ipv4Addr,
        prefix_len: u8,
    ) -> io::Result<()> {
        let mut message = AddressMessage::default();
        message.header.family = AddressFamily::Inet;
        message.header.prefix_len = prefix_len;
        message.header.scope = AddressScope::Universe;
        message.header.index = index;
        message.attributes = vec![
            AddressAttribute::Local(address.into()),
            AddressAttribute::Address(address.into()),
        ];
        self.request(
            RouteNetlinkMessage::NewAddress(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// Adds a default route through `gateway` to the main table.
    pub(crate) fn add_default_route(&mut self, gateway: Ipv4Addr) -> io::Result<()> {
        let mut message = RouteMessage::default();
        message.header.address_family = AddressFamily::Inet;
        message.header.destination_prefix_length = 0;
        message.header.table = RouteHeader::RT_TABLE_MAIN;
        message.header.protocol = RouteProtocol::Boot;
        message.header.scope = RouteScope::Universe;
        message.header.kind = RouteType::Unicast;
        message.attributes = vec![RouteAttribute::Gateway(RouteAddress::Inet(gateway))];
        self.request(
            RouteNetlinkMessage::NewRoute(message),
            NLM_F_CREATE | NLM_F_EXCL,
        )
        .map(drop)
    }

    /// The XDP programs attached to link `index` (IFLA_XDP), one per
    /// mode in use; empty when none is.
    pub(crate) fn xdp_programs(&mut self, index: u32) -> io::Result<Vec<XdpAttachment>> {
        let link = self.link(index)?;
        let xdp = link.attributes.into_iter().find_map(|a| match a {
            LinkAttribute::Xdp(xdp) => Some(xdp),
            _ => None,
        });
        Ok(xdp.map(|xdp| xdp_attachments(&xdp)).unwrap_or_default())
    }

    fn link(&mut self, index: u32) -> io::Result<LinkMessage> {
        let mut message = LinkMessage::default();
        message.header.index = index;
        let replies = self.request(RouteNetlinkMessage::GetLink(message), 0)?;
        replies
            .into_iter()
            .find_map(|reply| match reply {
                RouteNetlinkMessage::NewLink(link) if link.header.index == index => Some(link),
                _ => None,
            })
            .ok_or_else(|| io::Error::other(format!("no answer about link {index}")))
    }

    /// Sends one request and reads until its acknowledgement, returning
    /// the messages that came before it.
    fn request(
        &mut self,
        message: RouteNetlinkMessage,
        flags: u16,
    ) -> io::Result<Vec<RouteNetlinkMessage>> {
        self.sequence = self.sequence.wrapping_add(1);
        let sequence = self.sequence;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = sequence;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
        packet.finalize();
        let mut buffer = vec![0; packet.buffer_len()];
        packet.serialize(&mut buffer);
        self.socket.send(&buffer, 0)?;

        let mut replies = Vec::new();
        loop {
            let (datagram, _from) = self.socket.recv_from_full()?;
            let mut offset = 0;
            while offset < datagram.len() {
                let reply = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&datagram[offset..])
                    .map_err(|e| {
                        io::Error::new(io::ErrorKind::InvalidData, format!("netlink reply: {e}"))
                    })?;
                let length = reply.header.length as usize;
                if length == 0 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "netlink reply of length 0",
                    ));
                }
                // Messages are 4-byte aligned within a datagram.
                offset += (length + 3) & !3;
                if reply.header.sequence_number != sequence {
                    // A late answer to an earlier request: not ours.
                    continue;
                }
                match reply.payload {
                    NetlinkPayload::Error(error) => {
                        return match error.code {
                            None => Ok(replies),
                            Some(_) => Err(error.to_io()),
                        };
                    }
                    NetlinkPayload::Done(_) => return Ok(replies),
                    NetlinkPayload::InnerMessage(inner) => replies.push(inner),
                    _ => {}
                }
            }
        }
    }
}

/// The attached programs an IFLA_XDP attribute reports: with one mode in
/// use, IFLA_XDP_PROG_ID and that mode; with several (XDP_ATTACHED_MULTI),
/// one id per mode.
fn xdp_attachments(xdp: &[LinkXdp]) -> Vec<XdpAttachment> {
    let mut attached = XdpAttached::None;
    let mut single = None;
    let mut per_mode = Vec::new();
    for attribute in xdp {
        match attribute {
            LinkXdp::Attached(how) => attached = *how,
            LinkXdp::ProgId(id) => single = Some(*id),
            LinkXdp::DrvProgId(id) => per_mode.push((XdpAttachMode::Driver, *id)),
            LinkXdp::SkbProgId(id) => per_mode.push((XdpAttachMode::Generic, *id)),
            LinkXdp::HwProgId(id) => per_mode.push((XdpAttachMode::Offload, *id)),
            _ => {}
        }
    }
    let single_mode = match attached {
        XdpAttached::Driver => Some(XdpAttachMode::Driver),
        XdpAttached::SocketBuffer => Some(XdpAttachMode::Generic),
        XdpAttached::Hardware => Some(XdpAttachMode::Offload),
        _ => None,
    };
    match (attached, single_mode, single) {
        (XdpAttached::None, _, _) => Vec::new(),
        (_, Some(mode), Some(prog_id)) if per_mode.is_empty() => {
            vec![XdpAttachment { prog_id, mode }]
        }
        _ => per_mode
            .into_iter()
            .filter(|(_, id)| *id != 0)
            .map(|(mode, prog_id)| XdpAttachment { prog_id, mode })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xdp_attribute_gives_the_attached_programs() {
        assert!(xdp_attachments(&[LinkXdp::Attached(XdpAttached::None)]).is_empty());
        assert_eq!(
            xdp_attachments(&[
                LinkXdp::Attached(XdpAttached::Driver),
                LinkXdp::ProgId(7),
                LinkXdp::DrvProgId(7),
            ]),
            [XdpAttachment {
                prog_id: 7,
                mode: XdpAttachMode::Driver
            }]
        );
        assert_eq!(
            xdp_attachments(&[
                LinkXdp::Attached(XdpAttached::SocketBuffer),
                LinkXdp::ProgId(9)
            ]),
            [XdpAttachment {
                prog_id: 9,
                mode: XdpAttachMode::Generic
            }]
        );
        assert_eq!(
            xdp_attachments(&[
                LinkXdp::Attached(XdpAttached::Multiple),
                LinkXdp::DrvProgId(3),
                LinkXdp::SkbProgId(4),
            ]),
            [
                XdpAttachment {
                    prog_id: 3,
                    mode: XdpAttachMode::Driver
                },
                XdpAttachment {
                    prog_id: 4,
                    mode: XdpAttachMode::Generic
                }
            ]
        );
    }
}
