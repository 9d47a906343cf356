//! Rows that write packet fields, in the kernel and in the interpreter: the
//! output bytes of every `BPF_PROG_TEST_RUN` (data_out) must equal the
//! interpreter's rewritten frame, packet by packet, besides verdicts and
//! tables. Needs root and bpffs: prints `SKIP <test>: <reason>` otherwise.

use flowstate_difftest::packets::{self, Packet, CLOCK_START};
use flowstate_difftest::rng::Rng;
use flowstate_difftest::{check, skip};
use flowstate_wire::build::{mac, PacketBuilder};

fn program(flow: &str, rows: &str) -> flowstate_lang::ir::Program {
    let src = format!(
        "program rw\nhook xdp\nflow {flow}\nstates A, B\nregisters n = 0\ndefault pass\ntable\n{rows}end\n"
    );
    match flowstate_lang::compile(&src) {
        Ok(c) => c.program,
        Err(d) => panic!(
            "{}",
            flowstate_lang::diag::render(&d, "rw.fsm", &src, false)
        ),
    }
}

/// Frames every writable field's header appears in, then random ones.
fn packets(seed: u64) -> Vec<Packet> {
    let eth = || PacketBuilder::eth(mac(1), mac(2));
    let mut frames = vec![
        eth()
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .icmp(8, 0)
            .payload(40)
            .build(),
        eth()
            .vlan(10)
            .ipv4([10, 0, 0, 3], [10, 0, 0, 1])
            .tcp(40000, 80, 2)
            .payload(9)
            .build(),
        eth()
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .options(&[1; 8])
            .udp(53, 5353)
            .payload(3)
            .build(),
        eth()
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .ttl(0)
            .dscp(46)
            .udp(1, 2)
            .build(),
        eth().arp_request([10, 0, 0, 7], [10, 0, 0, 1]).build(),
        eth()
            .ipv6(
                std::net::Ipv6Addr::from(1u128),
                std::net::Ipv6Addr::from(2u128),
            )
            .tcp(1, 2, 0x12)
            .build(),
        eth()
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .fragment(185, false)
            .udp(9, 10)
            .build(),
    ];
    // UDP without a checksum.
    let mut no_sum = eth()
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
        .udp(7, 8)
        .payload(5)
        .build();
    let at = no_sum.len() - 5 - 2;
    no_sum[at..at + 2].copy_from_slice(&[0, 0]);
    frames.push(no_sum);
    let mut out: Vec<Packet> = frames
        .into_iter()
        .enumerate()
        .map(|(i, frame)| Packet {
            now: CLOCK_START + i as i64,
            frame,
        })
        .collect();
    let mut rng = Rng::new(seed);
    for mut p in packets::sequence(&mut rng, 300) {
        p.now += 1_000_000;
        out.push(p);
    }
    out
}

fn agree(name: &str, flow: &str, rows: &str) {
    if skip(name) {
        return;
    }
    let program = program(flow, rows);
    match check(&program, &packets(name.len() as u64), name) {
        Ok(stats) => assert!(stats.row_hits > 0, "{name}: no row fired"),
        Err(failure) => panic!("{failure}"),
    }
}

#[test]
fn icmp_echo_responder_bytes_agree() {
    agree(
        "icmp_echo_responder_bytes_agree",
        "ip.src",
        "  * icmp.type == 8 => tx, icmp.type = 0, ip.src = ip.dst, ip.dst = ip.src, \
         eth.src = eth.dst, eth.dst = eth.src, ip.ttl = 64\n",
    );
}

#[test]
fn arp_responder_bytes_agree() {
    agree(
        "arp_responder_bytes_agree",
        "eth.src",
        "  * arp.op == 1, arp.tpa == 10.0.0.1 => tx, arp.op = 2, arp.tha = arp.sha, \
         arp.tpa = arp.spa, arp.sha = 02:00:00:00:00:aa, arp.spa = 10.0.0.1, \
         eth.dst = eth.src, eth.src = 02:00:00:00:00:aa\n",
    );
}

#[test]
fn ttl_dscp_ports_and_nat_bytes_agree() {
    agree(
        "ttl_dscp_ports_and_nat_bytes_agree",
        "ip.src",
        "  A tcp.dport == 80 => pass, n = n + 1, ip.dst = 192.168.1.9, tcp.dport = 8080, tcp.sport = n + 1000, next B\n\
         \x20 * udp.dport in {53, 2, 8, 5353} => pass, udp.sport = udp.dport, udp.dport = udp.sport, ip.src = 172.16.0.1\n\
         \x20 * ip.ttl < 64 => pass, ip.ttl = ip.ttl - 1, ip.dscp = n + 46\n\
         \x20 * vlan.id == 10 => pass, vlan.id = 20\n\
         \x20 * * => drop, eth.dst = ff:ff:ff:ff:ff:ff\n",
    );
}
