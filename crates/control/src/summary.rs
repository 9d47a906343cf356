//! One-line summaries of packet heads, for `flowstate events`:
//! `10.0.0.1:40000 -> 10.0.0.100:22 TCP syn`.

use flowstate_wire::{format_value, Field, Headers, ValueFormat};

/// Summarises the first bytes of a frame. Fields cut off by the head's
/// length are simply left out (the parser marks them absent).
pub fn packet_head(head: &[u8]) -> String {
    let h = flowstate_wire::parse(head, 0);
    let addr = |f: Field| h.get(f).map(|v| format_value(f.format(), v));
    let (src, dst) = match (addr(Field::IpSrc), addr(Field::IpDst)) {
        (Some(s), Some(d)) => (s, d),
        _ => match (addr(Field::Ip6Src), addr(Field::Ip6Dst)) {
            (Some(s), Some(d)) => (format!("[{s}]"), format!("[{d}]")),
            _ => return ethernet(&h),
        },
    };
    let port = |f: Field| h.get(f).map(|p| format!(":{p}")).unwrap_or_default();
    if h.has(Field::TcpDport) {
        let flags = h
            .get(Field::TcpFlags)
            .map(|v| format_value(ValueFormat::TcpFlags, v))
            .unwrap_or_default();
        format!(
            "{src}{} -> {dst}{} TCP {flags}",
            port(Field::TcpSport),
            port(Field::TcpDport)
        )
    } else if h.has(Field::UdpDport) {
        format!(
            "{src}{} -> {dst}{} UDP",
            port(Field::UdpSport),
            port(Field::UdpDport)
        )
    } else if let Some(t) = h.get(Field::IcmpType) {
        let code = h.get(Field::IcmpCode).unwrap_or(0);
        format!("{src} -> {dst} ICMP type {t} code {code}")
    } else {
        let proto = h
            .get(Field::IpProto)
            .or_else(|| h.get(Field::Ip6Next))
            .map_or("?".to_string(), |p| p.to_string());
        format!("{src} -> {dst} proto {proto}")
    }
}

fn ethernet(h: &Headers) -> String {
    match (
        h.get(Field::EthSrc),
        h.get(Field::EthDst),
        h.get(Field::EthType),
    ) {
        (Some(s), Some(d), Some(t)) => format!(
            "{} -> {} ethertype {}",
            format_value(ValueFormat::Mac, s),
            format_value(ValueFormat::Mac, d),
            format_value(ValueFormat::Hex, t)
        ),
        _ => "(truncated frame)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(proto: u8, l4: &[u8]) -> Vec<u8> {
        let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
        let total = (20 + l4.len()) as u16;
        f.extend_from_slice(&[
            0x45,
            0,
            (total >> 8) as u8,
            total as u8,
            0,
            0,
            0,
            0,
            64,
            proto,
        ]);
        f.extend_from_slice(&[0, 0, 10, 0, 0, 1, 10, 0, 0, 100]);
        f.extend_from_slice(l4);
        f
    }

    #[test]
    fn tcp_syn_reads_like_the_brief() {
        let mut tcp = vec![
            0x9c, 0x40, 0, 22, 0, 0, 0, 0, 0, 0, 0, 0, 0x50, 0x02, 0xff, 0xff,
        ];
        tcp.extend_from_slice(&[0, 0, 0, 0]);
        assert_eq!(
            packet_head(&frame(6, &tcp)),
            "10.0.0.1:40000 -> 10.0.0.100:22 TCP syn"
        );
    }

    #[test]
    fn udp_icmp_and_truncation() {
        let udp = [0x04, 0x57, 0x04, 0x57, 0, 8, 0, 0];
        assert_eq!(
            packet_head(&frame(17, &udp)),
            "10.0.0.1:1111 -> 10.0.0.100:1111 UDP"
        );
        let icmp = [8, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(
            packet_head(&frame(1, &icmp)),
            "10.0.0.1 -> 10.0.0.100 ICMP type 8 code 0"
        );
        assert_eq!(packet_head(&[1, 2, 3]), "(truncated frame)");
        let arp = [vec![0xff; 6], vec![2, 0, 0, 0, 0, 1], vec![0x08, 0x06]].concat();
        assert_eq!(
            packet_head(&arp),
            "02:00:00:00:00:01 -> ff:ff:ff:ff:ff:ff ethertype 0x0806"
        );
    }
}
