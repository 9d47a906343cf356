//! Rows that write packet fields: the rewritten frame, the parallel
//! semantics of a row, and checksums verified by recomputing them from
//! scratch on the output frame.

use flowstate_interp::Machine;
use flowstate_lang::compile;
use flowstate_lang::ir::Action;
use flowstate_wire::build::{checksum_ok, mac, PacketBuilder};
use flowstate_wire::{layout, offsets as off, parse, Field};

fn program(flow: &str, rows: &str) -> flowstate_lang::ir::Program {
    let src = format!(
        "program t\nhook xdp\nflow {flow}\nstates A, B\nregisters n = 0\ndefault pass\ntable\n{rows}end\n"
    );
    match compile(&src) {
        Ok(c) => c.program,
        Err(d) => panic!("{}", flowstate_lang::diag::render(&d, "t.fsm", &src, false)),
    }
}

/// Every checksum of an IPv4 frame, summed from scratch.
fn checksums_ok(frame: &[u8]) -> bool {
    let l = layout(frame);
    let Some(ip) = l.ipv4 else { return true };
    let ihl = usize::from(frame[ip] & 0x0f) * 4;
    if !checksum_ok(&[&frame[ip..ip + ihl]]) {
        return false;
    }
    let Some((proto, at)) = l.transport else {
        return true;
    };
    let segment = &frame[at..];
    if proto == off::IP_PROTO_ICMP {
        return checksum_ok(&[segment]);
    }
    if proto == off::IP_PROTO_UDP && segment[6..8] == [0, 0] {
        return true;
    }
    let mut pseudo = frame[ip + 12..ip + 20].to_vec();
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
    checksum_ok(&[&pseudo, segment])
}

#[test]
fn icmp_echo_responder_swaps_addresses_and_keeps_checksums_right() {
    let p = program(
        "ip.src",
        "  * icmp.type == 8 => tx, icmp.type = 0, ip.src = ip.dst, ip.dst = ip.src, \
         eth.src = eth.dst, eth.dst = eth.src, ip.ttl = 64\n",
    );
    let mut m = Machine::new(&p);
    let request = PacketBuilder::eth(mac(1), mac(2))
        .ipv4([10, 0, 0, 1], [10, 0, 0, 99])
        .ttl(17)
        .icmp(8, 0)
        .payload(56)
        .build();
    let step = m.process(&request, 1, 0);
    assert_eq!(step.action, &Action::Tx);
    let reply = step.output(&request);
    assert!(checksums_ok(&reply));
    let (before, after) = (parse(&request, 1), parse(&reply, 1));
    assert_eq!(after.get(Field::IcmpType), Some(0));
    assert_eq!(after.get(Field::IpSrc), before.get(Field::IpDst));
    assert_eq!(after.get(Field::IpDst), before.get(Field::IpSrc));
    assert_eq!(after.get(Field::EthSrc), before.get(Field::EthDst));
    assert_eq!(after.get(Field::EthDst), before.get(Field::EthSrc));
    assert_eq!(after.get(Field::IpTtl), Some(64));
    // Nothing else moved: the payload is the request's.
    assert_eq!(reply.len(), request.len());
    assert_eq!(reply[reply.len() - 56..], request[request.len() - 56..]);
}

#[test]
fn right_hand_sides_read_registers_and_fields_from_before_the_row() {
    let p = program(
        "ip.src",
        "  * udp.dport == 53 => pass, n = n + 1000, udp.sport = n + 1, udp.dport = udp.sport, ip.dscp = 46\n",
    );
    let mut m = Machine::new(&p);
    let frame = PacketBuilder::eth(mac(1), mac(2))
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
        .dscp(10)
        .udp(40000, 53)
        .payload(20)
        .build();
    let first = m.process(&frame, 1, 0);
    assert_eq!(
        first.writes,
        [
            (Field::UdpSport, 1),
            (Field::UdpDport, 40000),
            (Field::IpDscp, 46)
        ]
    );
    let out = first.output(&frame);
    assert!(checksums_ok(&out));
    let second = m.process(&frame, 1, 1);
    assert_eq!(second.writes[0], (Field::UdpSport, 1001));
}

#[test]
fn values_are_cut_to_the_field_width() {
    let p = program("ip.src", "  * * => pass, ip.ttl = ip.ttl - 1\n");
    let mut m = Machine::new(&p);
    let frame = PacketBuilder::eth(mac(1), mac(2))
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
        .ttl(0)
        .tcp(1, 2, 2)
        .build();
    let step = m.process(&frame, 1, 0);
    assert_eq!(step.writes, [(Field::IpTtl, 255)]);
    assert!(checksums_ok(&step.output(&frame)));
}

#[test]
fn a_row_writing_a_field_the_packet_lacks_does_not_match() {
    let p = program(
        "ip.src",
        "  * * => drop, tcp.dport = 8080\n  * * => pass, next B\n",
    );
    let mut m = Machine::new(&p);
    let udp = PacketBuilder::eth(mac(1), mac(2))
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
        .udp(1, 2)
        .build();
    let step = m.process(&udp, 1, 0);
    assert_eq!((step.row, step.action), (Some(1), &Action::Pass));
    assert!(step.writes.is_empty());
    assert_eq!(step.output(&udp), udp);
    let tcp = PacketBuilder::eth(mac(1), mac(2))
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
        .tcp(1, 2, 2)
        .build();
    let step = m.process(&tcp, 1, 0);
    assert_eq!(step.row, Some(0));
    let out = step.output(&tcp);
    assert_eq!(parse(&out, 1).get(Field::TcpDport), Some(8080));
    assert!(checksums_ok(&out));
}

#[test]
fn arp_responder_answers_for_its_address_only() {
    let p = program(
        "eth.src",
        "  * arp.op == 1, arp.tpa == 10.0.0.1 => tx, arp.op = 2, arp.tha = arp.sha, \
         arp.tpa = arp.spa, arp.sha = 02:00:00:00:00:aa, arp.spa = 10.0.0.1, \
         eth.dst = eth.src, eth.src = 02:00:00:00:00:aa\n",
    );
    let mut m = Machine::new(&p);
    let asking = PacketBuilder::eth(mac(7), [0xff; 6]).arp_request([10, 0, 0, 7], [10, 0, 0, 1]);
    let request = asking.build();
    let step = m.process(&request, 1, 0);
    assert_eq!(step.action, &Action::Tx);
    let reply = parse(&step.output(&request), 1);
    assert_eq!(reply.get(Field::ArpOp), Some(2));
    assert_eq!(reply.get(Field::ArpSha), Some(0x0200_0000_00aa));
    assert_eq!(reply.get(Field::ArpSpa), Some(0x0a00_0001));
    assert_eq!(reply.get(Field::ArpTha), Some(0x0200_0000_0007));
    assert_eq!(reply.get(Field::ArpTpa), Some(0x0a00_0007));
    assert_eq!(reply.get(Field::EthDst), Some(0x0200_0000_0007));
    assert_eq!(reply.get(Field::EthSrc), Some(0x0200_0000_00aa));

    let other = PacketBuilder::eth(mac(7), [0xff; 6])
        .arp_request([10, 0, 0, 7], [10, 0, 0, 2])
        .build();
    let step = m.process(&other, 1, 0);
    assert_eq!((step.row, step.action), (None, &Action::Pass));
}
