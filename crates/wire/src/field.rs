//! The catalogue of packet fields a flowstate program can name.
//!
//! This is the one place that says which fields exist, how wide they are and
//! which header carries them. The language checks names against it, the
//! interpreter reads values through it, and the code generator emits loads
//! for it, so the three can never disagree about what `tcp.dport` is.

use std::fmt;

/// A header field (or packet metadata) that programs can match and read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Field {
    EthSrc,
    EthDst,
    EthType,
    VlanId,
    IpSrc,
    IpDst,
    IpProto,
    IpTtl,
    IpDscp,
    Ip6Src,
    Ip6Dst,
    Ip6Next,
    TcpSport,
    TcpDport,
    TcpFlags,
    UdpSport,
    UdpDport,
    IcmpType,
    IcmpCode,
    PktLen,
    PktIfindex,
    // ARP comes last so the older fields keep their numbers (presence bits,
    // metadata written into objects).
    ArpOp,
    ArpSha,
    ArpSpa,
    ArpTha,
    ArpTpa,
}

/// The header a field lives in; a field is absent when its layer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layer {
    /// Always present: packet length and ingress interface.
    Meta,
    Ethernet,
    /// The outermost 802.1Q/802.1ad tag.
    Vlan,
    Ipv4,
    Ipv6,
    Tcp,
    Udp,
    /// ICMP over IPv4 or ICMPv6 over IPv6.
    Icmp,
    /// ARP for IPv4 over Ethernet.
    Arp,
}

impl Field {
    pub const ALL: [Field; 26] = [
        Field::EthSrc,
        Field::EthDst,
        Field::EthType,
        Field::VlanId,
        Field::IpSrc,
        Field::IpDst,
        Field::IpProto,
        Field::IpTtl,
        Field::IpDscp,
        Field::Ip6Src,
        Field::Ip6Dst,
        Field::Ip6Next,
        Field::TcpSport,
        Field::TcpDport,
        Field::TcpFlags,
        Field::UdpSport,
        Field::UdpDport,
        Field::IcmpType,
        Field::IcmpCode,
        Field::PktLen,
        Field::PktIfindex,
        Field::ArpOp,
        Field::ArpSha,
        Field::ArpSpa,
        Field::ArpTha,
        Field::ArpTpa,
    ];

    /// The name a program writes, e.g. `tcp.dport`.
    pub fn name(self) -> &'static str {
        match self {
            Field::EthSrc => "eth.src",
            Field::EthDst => "eth.dst",
            Field::EthType => "eth.type",
            Field::VlanId => "vlan.id",
            Field::IpSrc => "ip.src",
            Field::IpDst => "ip.dst",
            Field::IpProto => "ip.proto",
            Field::IpTtl => "ip.ttl",
            Field::IpDscp => "ip.dscp",
            Field::Ip6Src => "ip6.src",
            Field::Ip6Dst => "ip6.dst",
            Field::Ip6Next => "ip6.next",
            Field::TcpSport => "tcp.sport",
            Field::TcpDport => "tcp.dport",
            Field::TcpFlags => "tcp.flags",
            Field::UdpSport => "udp.sport",
            Field::UdpDport => "udp.dport",
            Field::IcmpType => "icmp.type",
            Field::IcmpCode => "icmp.code",
            Field::PktLen => "pkt.len",
            Field::PktIfindex => "pkt.ifindex",
            Field::ArpOp => "arp.op",
            Field::ArpSha => "arp.sha",
            Field::ArpSpa => "arp.spa",
            Field::ArpTha => "arp.tha",
            Field::ArpTpa => "arp.tpa",
        }
    }

    pub fn from_name(name: &str) -> Option<Field> {
        Field::ALL.iter().copied().find(|f| f.name() == name)
    }

    /// Width of the value in bits.
    pub fn bits(self) -> u32 {
        match self {
            Field::EthSrc | Field::EthDst => 48,
            Field::EthType => 16,
            Field::VlanId => 12,
            Field::IpSrc | Field::IpDst => 32,
            Field::IpProto | Field::IpTtl => 8,
            Field::IpDscp => 6,
            Field::Ip6Src | Field::Ip6Dst => 128,
            Field::Ip6Next => 8,
            Field::TcpSport | Field::TcpDport | Field::UdpSport | Field::UdpDport => 16,
            // The eight classic flags: CWR ECE URG ACK PSH RST SYN FIN.
            Field::TcpFlags => 8,
            Field::IcmpType | Field::IcmpCode => 8,
            Field::PktLen | Field::PktIfindex => 32,
            Field::ArpOp => 16,
            Field::ArpSha | Field::ArpTha => 48,
            Field::ArpSpa | Field::ArpTpa => 32,
        }
    }

    /// Bytes the field takes in a packed flow key (big-endian, as on the wire).
    pub fn key_bytes(self) -> usize {
        (self.bits() as usize).div_ceil(8)
    }

    /// Whether the value fits a signed 64-bit register without loss.
    pub fn fits_register(self) -> bool {
        self.bits() <= 63
    }

    pub fn layer(self) -> Layer {
        match self {
            Field::EthSrc | Field::EthDst | Field::EthType => Layer::Ethernet,
            Field::VlanId => Layer::Vlan,
            Field::IpSrc | Field::IpDst | Field::IpProto | Field::IpTtl | Field::IpDscp => {
                Layer::Ipv4
            }
            Field::Ip6Src | Field::Ip6Dst | Field::Ip6Next => Layer::Ipv6,
            Field::TcpSport | Field::TcpDport | Field::TcpFlags => Layer::Tcp,
            Field::UdpSport | Field::UdpDport => Layer::Udp,
            Field::IcmpType | Field::IcmpCode => Layer::Icmp,
            Field::PktLen | Field::PktIfindex => Layer::Meta,
            Field::ArpOp | Field::ArpSha | Field::ArpSpa | Field::ArpTha | Field::ArpTpa => {
                Layer::Arp
            }
        }
    }

    /// How values of this field are written and printed.
    pub fn format(self) -> ValueFormat {
        match self {
            Field::EthSrc | Field::EthDst | Field::ArpSha | Field::ArpTha => ValueFormat::Mac,
            Field::IpSrc | Field::IpDst | Field::ArpSpa | Field::ArpTpa => ValueFormat::Ipv4,
            Field::Ip6Src | Field::Ip6Dst => ValueFormat::Ipv6,
            Field::TcpFlags => ValueFormat::TcpFlags,
            Field::EthType => ValueFormat::Hex,
            _ => ValueFormat::Decimal,
        }
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The natural notation of a field's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueFormat {
    Decimal,
    Hex,
    Mac,
    Ipv4,
    Ipv6,
    TcpFlags,
}

/// TCP flag names in bit order (bit 0 = FIN).
pub const TCP_FLAG_NAMES: [&str; 8] = ["fin", "syn", "rst", "psh", "ack", "urg", "ece", "cwr"];

/// Print a field value the way a user writes it.
pub fn format_value(format: ValueFormat, value: u128) -> String {
    match format {
        ValueFormat::Decimal => value.to_string(),
        ValueFormat::Hex => format!("0x{value:04x}"),
        ValueFormat::Mac => {
            let b = (value as u64).to_be_bytes();
            format!(
                "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                b[2], b[3], b[4], b[5], b[6], b[7]
            )
        }
        ValueFormat::Ipv4 => std::net::Ipv4Addr::from(value as u32).to_string(),
        ValueFormat::Ipv6 => std::net::Ipv6Addr::from(value).to_string(),
        ValueFormat::TcpFlags => {
            let names: Vec<&str> = TCP_FLAG_NAMES
                .iter()
                .enumerate()
                .filter(|(bit, _)| value & (1 << bit) != 0)
                .map(|(_, n)| *n)
                .collect();
            if names.is_empty() {
                "0".to_string()
            } else {
                names.join("|")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for f in Field::ALL {
            assert_eq!(Field::from_name(f.name()), Some(f));
        }
        assert_eq!(Field::from_name("tcp.port"), None);
    }

    #[test]
    fn values_print_naturally() {
        assert_eq!(format_value(ValueFormat::Ipv4, 0x0a000001), "10.0.0.1");
        assert_eq!(
            format_value(ValueFormat::Mac, 0x0200_0000_0001),
            "02:00:00:00:00:01"
        );
        assert_eq!(format_value(ValueFormat::TcpFlags, 0x12), "syn|ack");
        assert_eq!(
            format_value(ValueFormat::Ipv6, 0x2001_0db8 << 96),
            "2001:db8::"
        );
    }
}
