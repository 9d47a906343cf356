//! Test frames: Ethernet + IPv4 + UDP or TCP, padded to [`FRAME_LEN`].

use std::net::Ipv4Addr;

use flowstate_capture::synth::SERVER;
use flowstate_wire::build::{mac, PacketBuilder};
use flowstate_wire::offsets::TCP_ACK_FLAG;

/// Every benchmark frame is this long (the Ethernet minimum without FCS).
pub const FRAME_LEN: usize = 60;

/// Source port of every benchmark frame.
const SPORT: u16 = 40000;

fn from(src: Ipv4Addr) -> PacketBuilder {
    PacketBuilder::eth(mac(u32::from(src)), mac(u32::from(SERVER)))
}

/// Pads `builder`'s frame with payload up to [`FRAME_LEN`] bytes.
fn padded(builder: PacketBuilder) -> Vec<u8> {
    let headers = builder.build().len();
    builder.payload(FRAME_LEN.saturating_sub(headers)).build()
}

/// A UDP datagram from `src` to the server's `dport`.
pub fn udp(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    padded(from(src).ipv4(src, SERVER).udp(SPORT, dport))
}

/// A TCP ACK segment from `src` to the server's `dport`.
pub fn tcp(src: Ipv4Addr, dport: u16) -> Vec<u8> {
    padded(from(src).ipv4(src, SERVER).tcp(SPORT, dport, TCP_ACK_FLAG))
}

/// The `n`-th distinct source address for new-flow runs: `172.16.0.0 + n`,
/// outside the `10.0.0.0/8` hosts the other figures use.
pub fn fresh_source(n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(172, 16, 0, 0)).wrapping_add(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_wire::{parse, Field};

    #[test]
    fn frames_are_sixty_bytes_and_parse_as_built() {
        let src = Ipv4Addr::new(10, 0, 0, 7);
        let udp_frame = udp(src, 1111);
        let tcp_frame = tcp(src, 22);
        assert_eq!(udp_frame.len(), FRAME_LEN);
        assert_eq!(tcp_frame.len(), FRAME_LEN);

        let src = u128::from(u32::from(src));
        let headers = parse(&udp_frame, 1);
        assert_eq!(headers.get(Field::IpSrc), Some(src));
        assert_eq!(headers.get(Field::UdpDport), Some(1111));
        assert_eq!(headers.get(Field::TcpDport), None);

        let headers = parse(&tcp_frame, 1);
        assert_eq!(headers.get(Field::IpSrc), Some(src));
        assert_eq!(headers.get(Field::TcpDport), Some(22));
    }

    #[test]
    fn fresh_sources_are_distinct_and_outside_the_test_hosts() {
        assert_eq!(fresh_source(0), Ipv4Addr::new(172, 16, 0, 0));
        assert_eq!(fresh_source(256), Ipv4Addr::new(172, 16, 1, 0));
        assert_ne!(fresh_source(1), fresh_source(2));
    }
}
