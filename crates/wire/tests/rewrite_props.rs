//! Properties of field rewriting over built packets: after any writes, every
//! checksum verifies when summed from scratch, the written fields read back,
//! and any bytes apply never panics on.

use flowstate_wire::build::{checksum_ok, PacketBuilder};
use flowstate_wire::offsets::*;
use flowstate_wire::rewrite::{apply, writable};
use flowstate_wire::{layout, parse, Field};
use proptest::prelude::*;

/// Every checksum of `frame` that the builder filled, summed from scratch.
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
    match proto {
        IP_PROTO_ICMP => checksum_ok(&[segment]),
        IP_PROTO_UDP if segment[UDP_CHECKSUM..UDP_CHECKSUM + 2] == [0, 0] => true,
        _ => {
            let mut pseudo = frame[ip + IPV4_SRC..ip + IPV4_DST + 4].to_vec();
            pseudo.extend_from_slice(&[0, proto]);
            pseudo.extend_from_slice(&(segment.len() as u16).to_be_bytes());
            checksum_ok(&[&pseudo, segment])
        }
    }
}

fn built() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<[u8; 4]>(),
        any::<[u8; 4]>(),
        0u8..4,
        any::<(u16, u16, u8, u8)>(),
        0usize..40,
        any::<bool>(),
    )
        .prop_map(|(src, dst, kind, (a, b, c, d), payload, vlan)| {
            let mut p = PacketBuilder::eth([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
            if vlan {
                p = p.vlan(a & 0x0fff);
            }
            let p = match kind {
                0 => p.ipv4(src, dst).ttl(c).dscp(d & 0x3f).tcp(a, b, c),
                1 => p.ipv4(src, dst).ttl(c).udp(a, b),
                2 => p.ipv4(src, dst).icmp(c, d),
                _ => p.arp_request(src, dst),
            };
            p.payload(payload).build()
        })
}

fn writes() -> impl Strategy<Value = Vec<(Field, u128)>> {
    let fields: Vec<Field> = Field::ALL.into_iter().filter(|&f| writable(f)).collect();
    proptest::collection::vec((proptest::sample::select(fields), any::<u64>()), 0..8).prop_map(
        |raw| {
            let mut seen = Vec::new();
            raw.into_iter()
                .filter(|(f, _)| {
                    let first = !seen.contains(f);
                    seen.push(*f);
                    first
                })
                .map(|(f, v)| (f, u128::from(v) & (u128::MAX >> (128 - f.bits()))))
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn checksums_stay_right_and_writes_read_back(frame in built(), writes in writes()) {
        let mut out = frame.clone();
        apply(&mut out, &writes);
        prop_assert!(checksums_ok(&out));
        let before = parse(&frame, 1);
        let after = parse(&out, 1);
        for &(field, value) in &writes {
            if before.has(field) {
                prop_assert_eq!(after.get(field), Some(value), "{}", field);
            } else {
                prop_assert!(!after.has(field));
            }
        }
        prop_assert_eq!(out.len(), frame.len());
    }

    #[test]
    fn any_bytes_take_any_writes_without_panic(
        bytes in proptest::collection::vec(any::<u8>(), 0..100),
        writes in writes(),
    ) {
        let mut out = bytes.clone();
        apply(&mut out, &writes);
        prop_assert_eq!(out.len(), bytes.len());
    }
}
