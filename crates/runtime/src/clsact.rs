//! TC through a clsact qdisc and cls_bpf filters in direct-action mode:
//! the way to share the TC hook on kernels without TCX (before 6.6), and
//! selectable on newer ones.
//!
//! A filter is named by (interface, direction, priority, handle); lower
//! priorities run first, and a program returning TC_ACT_UNSPEC lets the
//! next filter run. There is no bpf_link: the filter stays until deleted,
//! whatever process made it, so the caller records its name. Replacing
//! the program of a filter (RTM_NEWTFILTER on the same priority and
//! handle, without NLM_F_EXCL) is atomic: cls_bpf swaps the filter in its
//! RCU list, so a packet sees the old program or the new one.
//!
//! Every call opens a route-netlink socket, which talks to the network
//! namespace of the calling thread: call from inside the interface's one.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::tc::{
    TcAttribute, TcBpfFlags, TcFilterBpfOption, TcHandle, TcHeader, TcMessage, TcOption,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::attach::TcDirection;

/// `ETH_P_ALL`: the filter sees every protocol.
const ETH_P_ALL: u16 = 0x0003;
/// The first priority `tc` itself gives a filter on an empty hook.
pub const DEFAULT_PRIORITY: u16 = 49152;
/// The handle flowstate gives its filters (one filter per priority).
pub const HANDLE: u32 = 1;

/// One cls_bpf filter on a clsact hook, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// The program's id; 0 for a filter of another kind than bpf.
    pub prog_id: u32,
    /// The filter's name (`tc filter show` prints it): the program's name
    /// for flowstate's, `OBJECT:[SECTION]` for `tc filter add ... bpf obj`.
    pub name: String,
}

fn parent(direction: TcDirection) -> TcHandle {
    TcHandle {
        major: 0xffff,
        minor: match direction {
            TcDirection::Ingress => TcHandle::MIN_INGRESS,
            TcDirection::Egress => TcHandle::MIN_EGRESS,
        },
    }
}

/// Adds a clsact qdisc to the interface; `Ok(false)` when it already has
/// one (then it is someone else's, or an earlier program's).
pub fn add_qdisc(ifindex: u32) -> io::Result<bool> {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = TcHandle::CLSACT;
    message.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    message.attributes = vec![TcAttribute::Kind("clsact".to_string())];
    match request(
        RouteNetlinkMessage::NewQueueDiscipline(message),
        NLM_F_CREATE | NLM_F_EXCL,
    ) {
        Ok(_) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes the interface's clsact qdisc, and with it every filter on it.
pub fn delete_qdisc(ifindex: u32) -> io::Result<()> {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = TcHandle::CLSACT;
    message.header.handle = TcHandle {
        major: 0xffff,
        minor: 0,
    };
    message.attributes = vec![TcAttribute::Kind("clsact".to_string())];
    request(RouteNetlinkMessage::DelQueueDiscipline(message), 0).map(drop)
}

/// The filters on one side of the interface, in run order (priority,
/// then handle). Empty when there is no clsact qdisc.
pub fn filters(ifindex: u32, direction: TcDirection) -> io::Result<Vec<Filter>> {
    let mut message = TcMessage::with_index(ifindex as i32);
    message.header.parent = parent(direction);
    let replies = match request(RouteNetlinkMessage::GetTrafficFilter(message), NLM_F_DUMP) {
        Ok(replies) => replies,
        // No qdisc (EINVAL on older kernels, ENOENT on newer).
        Err(e) if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOENT)) => Vec::new(),
        Err(e) => return Err(e),
    };
    let mut out: Vec<Filter> = replies
        .into_iter()
        .filter_map(|reply| match reply {
            RouteNetlinkMessage::NewTrafficFilter(m) => filter_of(m),
            _ => None,
        })
        .collect();
    out.sort_by_key(|f| (f.priority, f.handle));
    Ok(out)
}

/// A dump message as a filter: `None` for the per-priority chain heads
/// (handle 0), which carry no program.
fn filter_of(message: TcMessage) -> Option<Filter> {
    let handle: u32 = message.header.handle.into();
    if handle == 0 {
        return None;
    }
    let mut filter = Filter {
        priority: (message.header.info >> 16) as u16,
        handle,
        prog_id: 0,
        name: String::new(),
    };
    for attribute in message.attributes {
        if let TcAttribute::Options(options) = attribute {
            for option in options {
                match option {
                    TcOption::Bpf(TcFilterBpfOption::ProgId(id)) => filter.prog_id = id,
                    TcOption::Bpf(TcFilterBpfOption::ProgName(name)) => filter.name = name,
                    _ => {}
                }
            }
        }
    }
    Some(filter)
}

/// The filter at (`priority`, `handle`), if there is one.
pub fn filter_at(
    ifindex: u32,
    direction: TcDirection,
    priority: u16,
    handle: u32,
) -> io::Result<Option<Filter>> {
    Ok(filters(ifindex, direction)?
        .into_iter()
        .find(|f| f.priority == priority && f.handle == handle))
}

/// Adds a direct-action filter running `program` at `priority`; fails
/// with EEXIST when that priority and handle are taken.
pub fn add_filter(
    ifindex: u32,
    direction: TcDirection,
    priority: u16,
    program: BorrowedFd<'_>,
    name: &str,
) -> io::Result<()> {
    let message = filter_message(ifindex, direction, priority, Some((program, name)));
    request(
        RouteNetlinkMessage::NewTrafficFilter(message),
        NLM_F_CREATE | NLM_F_EXCL,
    )
    .map(drop)
}

/// Puts `program` on the existing filter at (`priority`, [`HANDLE`]),
/// atomically (see the module doc); ENOENT when there is none.
pub fn replace_program(
    ifindex: u32,
    direction: TcDirection,
    priority: u16,
    program: BorrowedFd<'_>,
    name: &str,
) -> io::Result<()> {
    let message = filter_message(ifindex, direction, priority, Some((program, name)));
    request(
        RouteNetlinkMessage::NewTrafficFilter(message),
        NLM_F_REPLACE,
    )
    .map(drop)
}

/// Deletes the filter at (`priority`, [`HANDLE`]).
pub fn delete_filter(ifindex: u32, direction: TcDirection, priority: u16) -> io::Result<()> {
    let message = filter_message(ifindex, direction, priority, None);
    request(RouteNetlinkMessage::DelTrafficFilter(message), 0).map(drop)
}

fn filter_message(
    ifindex: u32,
    direction: TcDirection,
    priority: u16,
    program: Option<(BorrowedFd<'_>, &str)>,
) -> TcMessage {
    let header = TcHeader {
        index: ifindex as i32,
        handle: TcHandle::from(HANDLE),
        parent: parent(direction),
        // TC_H_MAKE(priority << 16, htons(ETH_P_ALL)).
        info: (u32::from(priority) << 16) | u32::from(ETH_P_ALL.to_be()),
        ..TcHeader::default()
    };
    let mut attributes = vec![TcAttribute::Kind("bpf".to_string())];
    if let Some((fd, name)) = program {
        attributes.push(TcAttribute::Options(vec![
            TcOption::Bpf(TcFilterBpfOption::ProgFd(fd.as_raw_fd() as u32)),
            TcOption::Bpf(TcFilterBpfOption::ProgName(name.to_string())),
            TcOption::Bpf(TcFilterBpfOption::Flags(TcBpfFlags::DirectAction)),
        ]));
    }
    TcMessage::from_parts(header, attributes)
}

/// Sends one request on a new socket and reads until its acknowledgement
/// (or, for a dump, its end), returning the messages before it.
fn request(message: RouteNetlinkMessage, flags: u16) -> io::Result<Vec<RouteNetlinkMessage>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let sequence = 1;
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    header.sequence_number = sequence;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(message));
    packet.finalize();
    let mut buffer = vec![0; packet.buffer_len()];
    packet.serialize(&mut buffer);
    socket.send(&buffer, 0)?;

    let mut replies = Vec::new();
    loop {
        let (datagram, _from) = socket.recv_from_full()?;
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

/// The priority that puts a new filter where asked among `existing`:
/// last by default, or just before or after the filter at the given
/// priority. It takes the middle of the free gap there, so that later
/// filters still find room on either side (the gaps halve, so about 15
/// filters fit next to one another). `None` when the gap is empty.
pub fn priority_for(existing: &[Filter], place: Placement) -> Option<u16> {
    let priorities = || existing.iter().map(|f| u32::from(f.priority));
    // Exclusive bounds: 0 means "the kernel picks", 65536 is past u16.
    let (low, high) = match place {
        Placement::Last => match priorities().max() {
            None => return Some(DEFAULT_PRIORITY),
            Some(max) => (max, 1 << 16),
        },
        Placement::Before(relative) => {
            let relative = u32::from(relative);
            let below = priorities().filter(|p| *p < relative).max().unwrap_or(0);
            (below, relative)
        }
        Placement::After(relative) => {
            let relative = u32::from(relative);
            let above = priorities()
                .filter(|p| *p > relative)
                .min()
                .unwrap_or(1 << 16);
            (relative, above)
        }
    };
    let middle = low + (high - low) / 2;
    (middle > low && middle < high).then_some(middle as u16)
}

/// Where a new filter goes, relative to the priority of another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    Last,
    Before(u16),
    After(u16),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(priority: u16) -> Filter {
        Filter {
            priority,
            handle: 1,
            prog_id: 7,
            name: String::new(),
        }
    }

    #[test]
    fn a_new_filter_goes_last_or_next_to_its_relative() {
        assert_eq!(priority_for(&[], Placement::Last), Some(DEFAULT_PRIORITY));
        let two = [at(10), at(20)];
        assert_eq!(priority_for(&two, Placement::Last), Some(32778));
        assert_eq!(priority_for(&two, Placement::Before(20)), Some(15));
        assert_eq!(priority_for(&two, Placement::After(10)), Some(15));
        assert_eq!(priority_for(&two, Placement::Before(10)), Some(5));
        assert_eq!(priority_for(&two, Placement::After(20)), Some(32778));
        // No room between neighbours.
        let tight = [at(10), at(11)];
        assert_eq!(priority_for(&tight, Placement::After(10)), None);
        assert_eq!(priority_for(&tight, Placement::Before(11)), None);
        assert_eq!(priority_for(&[at(1)], Placement::Before(1)), None);
        assert_eq!(priority_for(&[at(u16::MAX)], Placement::Last), None);
        // Room is left on both sides of each new filter.
        let mut filters = vec![at(DEFAULT_PRIORITY)];
        for _ in 0..10 {
            let p = priority_for(&filters, Placement::Before(filters[0].priority)).unwrap();
            filters.insert(0, at(p));
            let next = priority_for(&filters, Placement::After(p)).unwrap();
            assert!(next > p && next < filters[1].priority);
        }
    }
}
