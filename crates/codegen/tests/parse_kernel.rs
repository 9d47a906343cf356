//! The emitted parser against the reference parser, in the kernel.
//!
//! Each test program runs `emit_parse` for a set of fields, copies the
//! presence mask and every field slot into its entry of the array map
//! `out`, and passes the packet. For thousands of frames (every header
//! shape, every truncation, malformed headers, mutated and random bytes)
//! BPF_PROG_TEST_RUN's result must equal `flowstate_wire::parse`.
//! Needs root and BPF; prints SKIP otherwise.

use flowstate_asm::{Assembler, Helper, Insn, JmpOp, MapRef, Reg::*, Size};
use flowstate_codegen::parse::{emit_parse, presence_bit, ParseRequest};
use flowstate_lang::ir::Hook;
use flowstate_obj::{BtfType, MapDef, MapKind, ObjectBuilder, ProgramDef, ProgramSection};
use flowstate_runtime::{load, LoadOptions, Loaded, TcDirection};
use flowstate_wire::build::PacketBuilder;
use flowstate_wire::offsets as off;
use flowstate_wire::{parse, Field};

const XDP_PASS: u32 = 2;
const TC_ACT_OK: u32 = 0;
const MAP: &str = "out";

/// Bytes a field takes in the map value (and on the stack).
fn width(field: Field) -> usize {
    if field.bits() > 64 {
        16
    } else {
        8
    }
}

/// Map value: the presence mask, then each field in catalogue order.
fn value_offset(field: Field) -> usize {
    8 + Field::ALL
        .iter()
        .take_while(|&&f| f != field)
        .map(|&f| width(f))
        .sum::<usize>()
}

const VALUE_SIZE: usize = 8 + 24 * 8 + 2 * 16;
/// The stack mirrors the map value: `[r10 - VALUE_SIZE, r10)`.
const FRAME: i16 = -(VALUE_SIZE as i16);
/// The map key lives below the mirror.
const KEY_SLOT: i16 = FRAME - 8;

fn slot(field: Field) -> i16 {
    FRAME + value_offset(field) as i16
}

/// A program that parses `fields` and stores the result at `out[key]`.
fn test_program(name: &str, hook: Hook, fields: &[Field], key: u32) -> ProgramDef {
    let mut asm = Assembler::new();
    // Absent fields then read as zero, deterministically.
    for at in (8..VALUE_SIZE).step_by(8) {
        asm.emit(Insn::st(Size::DW, R10, FRAME + at as i16, 0));
    }
    emit_parse(
        &mut asm,
        &ParseRequest {
            hook,
            fields,
            slot: &slot,
            headers: None,
        },
    );
    let exit = asm.new_label();
    asm.emit(Insn::st(Size::W, R10, KEY_SLOT, key as i32));
    asm.ld_map_fd(R1, MapRef(0));
    asm.emit(Insn::mov64(R2, R10));
    asm.emit(Insn::add64(R2, i32::from(KEY_SLOT)));
    asm.emit(Insn::call(Helper::MAP_LOOKUP_ELEM));
    asm.jmp(JmpOp::Eq, R0, 0, exit);
    asm.emit(Insn::stx(Size::DW, R0, R9, 0));
    for at in (8..VALUE_SIZE).step_by(8) {
        asm.emit(Insn::ldx(Size::DW, R1, R10, FRAME + at as i16));
        asm.emit(Insn::stx(Size::DW, R0, R1, at as i16));
    }
    asm.bind(exit);
    let verdict = if hook == Hook::Xdp {
        XDP_PASS
    } else {
        TC_ACT_OK
    };
    asm.emit(Insn::mov64(R0, verdict as i32));
    asm.emit(Insn::exit());
    let program = asm.finish().expect("test program assembles");
    ProgramDef {
        name: name.to_string(),
        section: match hook {
            Hook::Xdp => ProgramSection::Xdp,
            Hook::TcIngress | Hook::TcEgress => ProgramSection::Classifier,
        },
        insns: program.bytes(),
        map_relocs: program
            .relocs
            .iter()
            .map(|r| (r.insn_index, MAP.to_string()))
            .collect(),
    }
}

/// Field sets whose parsers differ in shape: everything, each field alone
/// (the lazy paths), and the transport dispatch combinations.
fn field_sets() -> Vec<(String, Vec<Field>)> {
    let mut sets = vec![("all".to_string(), Field::ALL.to_vec())];
    for field in Field::ALL {
        sets.push((field.name().replace('.', "_"), vec![field]));
    }
    let combos: [(&str, &[Field]); 5] = [
        ("tcp_udp", &[Field::TcpDport, Field::UdpSport]),
        ("udp_icmp", &[Field::UdpDport, Field::IcmpCode]),
        ("tcp_icmp", &[Field::TcpFlags, Field::IcmpType]),
        ("v4_tcp", &[Field::IpSrc, Field::TcpDport]),
        ("type_v6", &[Field::EthType, Field::Ip6Next, Field::VlanId]),
    ];
    for (name, fields) in combos {
        sets.push((name.to_string(), fields.to_vec()));
    }
    sets
}

struct Rig {
    loaded: Loaded,
    /// (program name, hook, fields, map key)
    programs: Vec<(String, Hook, Vec<Field>, u32)>,
}

fn rig() -> Rig {
    let mut programs = Vec::new();
    for (hook, suffix) in [(Hook::Xdp, "xdp"), (Hook::TcIngress, "tc")] {
        for (name, fields) in field_sets() {
            let key = programs.len() as u32;
            programs.push((format!("p_{name}_{suffix}"), hook, fields, key));
        }
    }
    // The egress flavour differs only where it attaches (see the veth test).
    let key = programs.len() as u32;
    programs.push((
        "p_all_tcegress".to_string(),
        Hook::TcEgress,
        Field::ALL.to_vec(),
        key,
    ));
    let mut builder = ObjectBuilder::new();
    builder.add_map(MapDef::new(
        MAP,
        MapKind::Array,
        BtfType::u32(),
        BtfType::array(BtfType::u64(), (VALUE_SIZE / 8) as u32),
        programs.len() as u32,
    ));
    for (name, hook, fields, key) in &programs {
        builder.add_program(test_program(name, *hook, fields, *key));
    }
    let object = builder.build().expect("object builds");
    let loaded = match load(&object, &LoadOptions::default()) {
        Ok(loaded) => loaded,
        Err(e) => panic!("load failed: {e}"),
    };
    Rig { loaded, programs }
}

/// Why the kernel tests cannot run here, if they cannot.
fn skip_reason() -> Option<&'static str> {
    use std::os::unix::fs::MetadataExt;
    // /proc/self belongs to the effective user.
    match std::fs::metadata("/proc/self") {
        Ok(meta) if meta.uid() == 0 => None,
        Ok(_) => Some("needs root (CAP_BPF)"),
        Err(_) => Some("no /proc to check privileges"),
    }
}

fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, skip_reason())
}

/// The ifindex BPF_PROG_TEST_RUN reports without a context: loopback.
const TEST_RUN_IFINDEX: u32 = 1;
/// Shortest frame BPF_PROG_TEST_RUN accepts, for XDP and for skb
/// programs (ETH_HLEN); `test_run_refuses_short_frames` checks it.
const MIN_TEST_RUN_LEN: usize = 14;

/// Whether BPF_PROG_TEST_RUN takes `frame` for an skb (TC) program: on
/// top of ETH_HLEN, it wants a whole minimal IPv4 or IPv6 header behind
/// those outer ethertypes (whatever the bytes are); shorter ones fail with
/// EINVAL. XDP takes any frame of 14 bytes or more.
fn tc_test_run_accepts(frame: &[u8]) -> bool {
    let min = match frame.get(off::ETH_TYPE..off::ETH_HEADER_LEN) {
        Some([0x08, 0x00]) => off::ETH_HEADER_LEN + off::IPV4_MIN_LEN,
        Some([0x86, 0xdd]) => off::ETH_HEADER_LEN + off::IPV6_HEADER_LEN,
        _ => MIN_TEST_RUN_LEN,
    };
    frame.len() >= min
}

impl Rig {
    /// Runs `program` on `frame`; the presence mask and the field values.
    fn run(&self, program: &str, key: u32, frame: &[u8]) -> (u64, Vec<u8>) {
        let result = self
            .loaded
            .test_run(program, frame, 1)
            .unwrap_or_else(|e| panic!("{program} on {frame:02x?}: {e}"));
        let expected = if program.ends_with("_xdp") {
            XDP_PASS
        } else {
            TC_ACT_OK
        };
        assert_eq!(result.retval, expected, "{program}");
        let value = self.loaded.map(MAP).unwrap().array_get(key).unwrap();
        let mask = u64::from_le_bytes(value[..8].try_into().unwrap());
        (mask, value)
    }

    /// Compares every program with `flowstate_wire::parse` on `frame`;
    /// returns the number of comparisons.
    fn check(&self, frame: &[u8]) -> usize {
        let want = parse(frame, TEST_RUN_IFINDEX);
        let mut runs = 0;
        for (program, hook, fields, key) in &self.programs {
            if *hook != Hook::Xdp && !tc_test_run_accepts(frame) {
                continue;
            }
            runs += 1;
            let (mask, value) = self.run(program, *key, frame);
            for &field in Field::ALL.iter() {
                let requested = fields.contains(&field);
                let got_present = mask & u64::from(presence_bit(field)) != 0;
                let want_value = want.get(field).filter(|_| requested);
                assert_eq!(
                    got_present,
                    want_value.is_some(),
                    "{program}: presence of {field} in {frame:02x?} (mask {mask:#x}); wire: {want}"
                );
                if let Some(want_value) = want_value {
                    let at = value_offset(field);
                    let got = if width(field) == 16 {
                        let high = u64::from_le_bytes(value[at..at + 8].try_into().unwrap());
                        let low = u64::from_le_bytes(value[at + 8..at + 16].try_into().unwrap());
                        (u128::from(high) << 64) | u128::from(low)
                    } else {
                        u128::from(u64::from_le_bytes(value[at..at + 8].try_into().unwrap()))
                    };
                    assert_eq!(
                        got, want_value,
                        "{program}: value of {field} in {frame:02x?}; wire: {want}"
                    );
                }
            }
        }
        runs
    }
}

const MAC_A: [u8; 6] = [0x02, 0x11, 0x22, 0x33, 0x44, 0x55];
const MAC_B: [u8; 6] = [0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54];

fn v6(last: u16) -> std::net::Ipv6Addr {
    std::net::Ipv6Addr::new(0x2001, 0xdb8, 0xa1b2, 0xc3d4, 0xe5f6, 0x0718, 0x293a, last)
}

/// Builder-made frames of every shape the rules name.
fn shapes() -> Vec<Vec<u8>> {
    let tag_stacks: Vec<Vec<(u16, u16)>> = vec![
        vec![],
        vec![(off::ETHERTYPE_VLAN, 10)],
        vec![(off::ETHERTYPE_VLAN, 0xf123)], // priority bits set
        vec![(off::ETHERTYPE_QINQ, 100)],
        vec![(off::ETHERTYPE_QINQ, 100), (off::ETHERTYPE_VLAN, 200)],
        vec![(off::ETHERTYPE_VLAN, 1), (off::ETHERTYPE_VLAN, 4095)],
        vec![(off::ETHERTYPE_VLAN, 7), (off::ETHERTYPE_QINQ, 8)],
        // A third tag is not parsed: its TPID is eth.type.
        vec![
            (off::ETHERTYPE_QINQ, 1),
            (off::ETHERTYPE_VLAN, 2),
            (off::ETHERTYPE_VLAN, 3),
        ],
    ];
    let ipv4 = || PacketBuilder::eth(MAC_A, MAC_B).ipv4([10, 1, 2, 3], [192, 168, 200, 254]);
    let ipv6 = || PacketBuilder::eth(MAC_A, MAC_B).ipv6(v6(1), v6(0xfffe));
    let networks: Vec<PacketBuilder> = vec![
        PacketBuilder::eth(MAC_A, MAC_B).payload(30),
        PacketBuilder::eth(MAC_A, MAC_B).arp_request([10, 0, 0, 1], [10, 0, 0, 2]),
        // An ARP reply (every address non-zero), and ARP for another
        // protocol type, which is not parsed.
        PacketBuilder::eth(MAC_A, MAC_B)
            .ethertype(off::ETHERTYPE_ARP)
            .payload_bytes(&[
                0, 1, 8, 0, 6, 4, 0, 2, 2, 0xaa, 0xbb, 0xcc, 0xdd, 0xee, 10, 9, 8, 7, 0xfe, 0xdc,
                0xba, 0x98, 0x76, 0x54, 192, 168, 1, 254,
            ]),
        PacketBuilder::eth(MAC_A, MAC_B)
            .ethertype(off::ETHERTYPE_ARP)
            .payload_bytes(&[0, 1, 0x86, 0xdd, 6, 4, 0, 1])
            .payload(20),
        ipv4()
            .tcp(40000, 22, off::TCP_SYN | off::TCP_ACK_FLAG)
            .payload(5),
        ipv4().udp(5353, 1111).payload(3),
        ipv4().icmp(8, 0),
        ipv4().ttl(1).dscp(46).tcp(1, 65535, 0xff),
        ipv4().options(&[1, 1, 1, 1]).udp(1, 2),
        ipv4().options(&[7; 40]).tcp(443, 50000, off::TCP_FIN),
        ipv4().fragment(0, true).udp(9, 10),
        ipv4().fragment(185, false).udp(9, 10),
        ipv4().fragment(1, true).tcp(9, 10, 2),
        ipv4().protocol(253).payload(20),
        ipv4().protocol(off::IP_PROTO_ICMPV6).payload(8),
        ipv4().protocol(off::IP_PROTO_TCP).payload(19),
        ipv6().tcp(8080, 80, off::TCP_RST),
        ipv6().udp(546, 547).payload(12),
        ipv6().icmpv6(128, 0),
        ipv6().icmpv6(1, 4).ttl(255).dscp(10),
        ipv6().protocol(off::IP_PROTO_ICMP).payload(8),
        ipv6().protocol(59),
        ipv6().protocol(0).payload(40),
    ];
    let mut frames = Vec::new();
    for tags in &tag_stacks {
        for network in &networks {
            let mut builder = network.clone();
            for &(tpid, tci) in tags {
                builder = builder.tag(tpid, tci);
            }
            frames.push(builder.build());
        }
    }
    frames
}

/// Where the layer-3 header starts when the frame has `tags` tags.
fn l3(tags: usize) -> usize {
    off::ETH_HEADER_LEN + tags * off::VLAN_TAG_LEN
}

/// Frames whose IP headers break one rule each.
fn malformed() -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    let v4 = PacketBuilder::eth(MAC_A, MAC_B)
        .ipv4([1, 2, 3, 4], [5, 6, 7, 8])
        .tcp(1000, 2000, 0x12)
        .payload(48);
    let v6 = PacketBuilder::eth(MAC_A, MAC_B)
        .ipv6(v6(3), v6(4))
        .udp(1, 2)
        .payload(8);
    for tags in 0..=2 {
        let mut v4 = v4.clone();
        let mut v6 = v6.clone();
        for t in 0..tags {
            v4 = v4.vlan(t as u16 + 5);
            v6 = v6.qinq(t as u16 + 5);
        }
        let (v4, v6, at) = (v4.build(), v6.build(), l3(tags));
        // Every IHL (0..=15) with version 4, and every version with IHL 5.
        for byte in (0x40..=0x4f).chain((0..16).map(|v| (v << 4) | 5)) {
            let mut f = v4.clone();
            f[at] = byte;
            frames.push(f);
        }
        for version in 0..16u8 {
            let mut f = v6.clone();
            f[at] = (version << 4) | (f[at] & 0x0f);
            frames.push(f);
        }
        // Fragment offset bits one by one, MF and DF alone.
        for bit in 0..16 {
            let mut f = v4.clone();
            let word = 1u16 << bit;
            f[at + off::IPV4_FRAG..at + off::IPV4_FRAG + 2].copy_from_slice(&word.to_be_bytes());
            frames.push(f);
        }
    }
    frames
}

/// Every prefix of `frame` the kernel accepts.
fn truncations(frame: &[u8]) -> impl Iterator<Item = &[u8]> {
    (MIN_TEST_RUN_LEN..=frame.len()).map(move |len| &frame[..len])
}

/// Ethertypes and protocol numbers random frames are steered towards, so
/// that random bytes reach the deeper layers.
const ETHERTYPES: [u16; 5] = [
    off::ETHERTYPE_IPV4,
    off::ETHERTYPE_IPV6,
    off::ETHERTYPE_VLAN,
    off::ETHERTYPE_QINQ,
    off::ETHERTYPE_ARP,
];

fn random_frames(rng: &mut fastrand::Rng, count: usize, base: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut frames = Vec::with_capacity(count);
    for i in 0..count {
        let frame = match i % 3 {
            // Pure random bytes.
            0 => {
                let len = rng.usize(MIN_TEST_RUN_LEN..=120);
                (0..len).map(|_| rng.u8(..)).collect()
            }
            // Random bytes behind a plausible ethertype chain.
            1 => {
                let len = rng.usize(MIN_TEST_RUN_LEN..=120);
                let mut f: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                let mut at = off::ETH_TYPE;
                while at + 2 <= f.len() {
                    let ty = ETHERTYPES[rng.usize(..ETHERTYPES.len())];
                    f[at..at + 2].copy_from_slice(&ty.to_be_bytes());
                    if ty != off::ETHERTYPE_VLAN && ty != off::ETHERTYPE_QINQ {
                        // Give IP a good chance of a valid version nibble.
                        if at + 2 < f.len() && rng.bool() {
                            let version = if ty == off::ETHERTYPE_IPV4 {
                                0x40
                            } else {
                                0x60
                            };
                            f[at + 2] = version | (f[at + 2] & 0x0f);
                        }
                        break;
                    }
                    at += off::VLAN_TAG_LEN;
                }
                f
            }
            // A valid frame with a few bytes changed.
            _ => {
                let mut f = base[rng.usize(..base.len())].clone();
                for _ in 0..rng.usize(1..=4) {
                    let at = rng.usize(..f.len());
                    f[at] = rng.u8(..);
                }
                f
            }
        };
        frames.push(frame);
    }
    frames
}

#[test]
fn parse_agrees_with_wire_for_every_shape_and_truncation() {
    if skip("parse_agrees_with_wire_for_every_shape_and_truncation") {
        return;
    }
    let rig = rig();
    let mut frames = shapes();
    frames.extend(malformed());
    let mut checked = 0;
    let mut runs = 0;
    for frame in &frames {
        for prefix in truncations(frame) {
            runs += rig.check(prefix);
            checked += 1;
        }
    }
    eprintln!(
        "{checked} frames ({} shapes and malformations with all their truncations), {runs} test runs",
        frames.len()
    );
    assert!(checked > 5000, "{checked}");
}

#[test]
fn parse_agrees_with_wire_on_random_frames() {
    if skip("parse_agrees_with_wire_on_random_frames") {
        return;
    }
    let rig = rig();
    let seed = std::env::var("FLOWSTATE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f10e);
    eprintln!("seed {seed} (set FLOWSTATE_SEED to replay another)");
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut base = shapes();
    base.extend(malformed());
    let frames = random_frames(&mut rng, 3000, &base);
    let mut present = [0usize; Field::ALL.len()];
    for frame in &frames {
        rig.check(frame);
        for (field, _) in parse(frame, TEST_RUN_IFINDEX).present() {
            present[field as usize] += 1;
        }
    }
    // The random frames must reach every layer, or they test little.
    for field in Field::ALL {
        assert!(
            present[field as usize] > 0,
            "no random frame carries {field}"
        );
    }
}

#[test]
fn test_run_refuses_short_frames() {
    if skip("test_run_refuses_short_frames") {
        return;
    }
    let rig = rig();
    for (program, _, _, _) in rig.programs.iter().filter(|p| p.0.starts_with("p_all_")) {
        let frame = [0u8; MIN_TEST_RUN_LEN];
        for len in 0..MIN_TEST_RUN_LEN {
            assert!(
                rig.loaded.test_run(program, &frame[..len], 1).is_err(),
                "{program} accepted a {len}-byte frame"
            );
        }
        assert!(rig.loaded.test_run(program, &frame, 1).is_ok());
    }
    // TC only: IPv4 and IPv6 frames need their minimal IP header.
    for (ethertype, min) in [(off::ETHERTYPE_IPV4, 34), (off::ETHERTYPE_IPV6, 54)] {
        let mut frame = vec![0u8; min];
        frame[off::ETH_TYPE..off::ETH_HEADER_LEN].copy_from_slice(&ethertype.to_be_bytes());
        for len in MIN_TEST_RUN_LEN..min {
            assert!(!tc_test_run_accepts(&frame[..len]));
            assert!(rig.loaded.test_run("p_all_tc", &frame[..len], 1).is_err());
            assert!(rig.loaded.test_run("p_all_xdp", &frame[..len], 1).is_ok());
        }
        assert!(tc_test_run_accepts(&frame));
        assert!(rig.loaded.test_run("p_all_tc", &frame, 1).is_ok());
    }
}

#[test]
fn speed_and_size_figures() {
    if skip("speed_and_size_figures") {
        return;
    }
    let rig = rig();
    let frames = [
        (
            "ipv4/tcp",
            PacketBuilder::eth(MAC_A, MAC_B)
                .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
                .tcp(1, 2, 2)
                .payload(20)
                .build(),
        ),
        (
            "vlan/ipv6/udp",
            PacketBuilder::eth(MAC_A, MAC_B)
                .vlan(5)
                .ipv6(v6(1), v6(2))
                .udp(1, 2)
                .payload(20)
                .build(),
        ),
    ];
    // p_pkt_ifindex_* parse nothing: the baseline (zeroing, map lookup, copy).
    for program in [
        "p_pkt_ifindex_xdp",
        "p_all_xdp",
        "p_ip_src_xdp",
        "p_tcp_dport_xdp",
        "p_pkt_ifindex_tc",
        "p_all_tc",
    ] {
        let stats = rig.loaded.stats(program).unwrap();
        for (name, frame) in &frames {
            let run = rig.loaded.test_run(program, frame, 100_000).unwrap();
            eprintln!(
                "{program} {name}: {} ns/run, verified insns {:?}, jited {} bytes",
                run.duration_ns, stats.verified_insns, stats.jited_bytes
            );
        }
    }
}

/// A network namespace with a veth pair (veth0, veth1), jumbo MTU and no
/// IPv6 (so no stray traffic), deleted on drop.
struct Netns {
    name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

impl Netns {
    fn new() -> Result<Netns, String> {
        let name = format!("fs-cgparse-{}", std::process::id());
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let netns = Netns { name };
        for sysctl in ["all", "default"] {
            netns.exec(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{sysctl}.disable_ipv6=1"),
            ])?;
        }
        netns.exec(&[
            "ip", "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
        ])?;
        for dev in ["veth0", "veth1"] {
            netns.exec(&["ip", "link", "set", dev, "mtu", "9000", "up"])?;
        }
        Ok(netns)
    }

    fn exec(&self, command: &[&str]) -> Result<(), String> {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(command);
        ip(&args)
    }

    /// Runs `f` on a thread that has entered the namespace.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    use std::os::fd::AsRawFd;
                    let file = std::fs::File::open(&path).expect("netns file");
                    // SAFETY: setns on a valid namespace fd; affects this thread only.
                    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("namespace thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.name]);
    }
}

fn ifindex(name: &str) -> u32 {
    let name = std::ffi::CString::new(name).unwrap();
    // SAFETY: a valid NUL-terminated string.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert_ne!(index, 0, "no interface {name:?}");
    index
}

/// Sends `frame` out of interface `index` through an AF_PACKET socket.
fn send_frame(index: u32, frame: &[u8]) {
    // SAFETY: plain socket calls on a fresh fd, closed below; the address
    // and the buffer outlive the calls.
    unsafe {
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = index as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        let sent = libc::sendto(
            fd,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&addr as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        );
        let error = std::io::Error::last_os_error();
        libc::close(fd);
        assert_eq!(sent, frame.len() as isize, "sendto: {error}");
    }
}

/// Frames whose outer tag the receive path moves into skb metadata before
/// TC ingress, and jumbo frames an AF_PACKET socket sends with only the
/// Ethernet header in the linear part of the skb.
fn veth_frames() -> Vec<Vec<u8>> {
    let ipv4 = || PacketBuilder::eth(MAC_A, MAC_B).ipv4([10, 1, 2, 3], [10, 9, 8, 7]);
    let ipv6 = || PacketBuilder::eth(MAC_A, MAC_B).ipv6(v6(1), v6(2));
    vec![
        ipv4().tcp(1234, 80, off::TCP_SYN).build(),
        ipv4().vlan(42).tcp(1234, 80, off::TCP_SYN).build(),
        ipv4().qinq(7).vlan(8).udp(53, 5353).payload(10).build(),
        ipv6().tag(off::ETHERTYPE_VLAN, 0xa00b).udp(1, 2).build(),
        ipv6().vlan(1).vlan(2).vlan(3).build(),
        PacketBuilder::eth(MAC_A, MAC_B)
            .vlan(99)
            .arp_request([1, 1, 1, 1], [2, 2, 2, 2])
            .build(),
        ipv4()
            .options(&[1; 40])
            .tcp(5, 6, 0x18)
            .payload(6000)
            .build(),
        ipv4().vlan(300).udp(7, 8).payload(5000).build(),
        ipv6()
            .qinq(1)
            .vlan(2)
            .tcp(9, 10, 0x10)
            .payload(7000)
            .build(),
    ]
}

#[test]
fn tc_on_veth_sees_frames_as_wire_parses_them() {
    if skip("tc_on_veth_sees_frames_as_wire_parses_them") {
        return;
    }
    let netns = Netns::new().expect("network namespace with a veth pair");
    netns.enter(|| {
        let mut rig = rig();
        let ingress = &rig
            .programs
            .iter()
            .find(|p| p.0 == "p_all_tc")
            .unwrap()
            .clone();
        let egress = &rig
            .programs
            .iter()
            .find(|p| p.0 == "p_all_tcegress")
            .unwrap()
            .clone();
        let _ingress_link = rig
            .loaded
            .attach_tc(&ingress.0, "veth0", TcDirection::Ingress)
            .expect("attach at veth0 ingress");
        let _egress_link = rig
            .loaded
            .attach_tc(&egress.0, "veth1", TcDirection::Egress)
            .expect("attach at veth1 egress");
        let map = rig.loaded.map(MAP).unwrap();
        let (veth0, veth1) = (ifindex("veth0"), ifindex("veth1"));
        for frame in veth_frames() {
            for key in [ingress.3, egress.3] {
                map.array_set(key, &[0; VALUE_SIZE]).unwrap();
            }
            send_frame(veth1, &frame);
            // veth delivers through the backlog: wait for both programs.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
            let read = |key: u32| map.array_get(key).unwrap();
            while [ingress.3, egress.3]
                .iter()
                .any(|&k| read(k)[..8] == [0; 8])
            {
                assert!(std::time::Instant::now() < deadline, "frame not seen");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            for ((program, _, _, key), index) in [(ingress, veth0), (egress, veth1)] {
                let value = read(*key);
                compare(program, &frame, index, &value);
            }
        }
    });
}

/// Asserts that `value` (mask and slots of an all-fields program) is what
/// `flowstate_wire::parse` makes of `frame` on `ifindex`.
fn compare(program: &str, frame: &[u8], ifindex: u32, value: &[u8]) {
    let want = parse(frame, ifindex);
    let mask = u64::from_le_bytes(value[..8].try_into().unwrap());
    for field in Field::ALL {
        let at = value_offset(field);
        let word = |at: usize| u64::from_le_bytes(value[at..at + 8].try_into().unwrap());
        let got = (mask & u64::from(presence_bit(field)) != 0).then(|| {
            if width(field) == 16 {
                (u128::from(word(at)) << 64) | u128::from(word(at + 8))
            } else {
                u128::from(word(at))
            }
        });
        assert_eq!(
            got,
            want.get(field),
            "{program}: {field} of a {}-byte frame; wire: {want}",
            frame.len()
        );
    }
}
