//! Flow keys as users type them: the way `flowstate flows` prints them
//! (`flowstate_interp::Key::display`), one value per key field separated by
//! spaces: `10.0.0.1`, `02:00:00:00:00:01`, `10.0.0.1 22`, `syn|ack`.

use std::net::{Ipv4Addr, Ipv6Addr};

use flowstate_interp::Key;
use flowstate_wire::field::TCP_FLAG_NAMES;
use flowstate_wire::{Field, ValueFormat};

/// Packs `text` into a key over `fields` (big-endian, `key_bytes` per
/// field, as the compiled program and the interpreter pack keys).
pub fn parse_key(fields: &[Field], text: &str) -> Result<Vec<u8>, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() != fields.len() {
        let names: Vec<&str> = fields.iter().map(|f| f.name()).collect();
        return Err(format!(
            "{text:?} has {} value(s); the key is {} ({} value(s), separated by spaces)",
            words.len(),
            names.join(" "),
            fields.len()
        ));
    }
    let mut key = Vec::new();
    for (&field, word) in fields.iter().zip(words) {
        let value = parse_value(field, word)?;
        let n = field.key_bytes();
        key.extend_from_slice(&value.to_be_bytes()[16 - n..]);
    }
    Ok(key)
}

/// The key as `flows` prints it.
pub fn format_key(fields: &[Field], key: &[u8]) -> String {
    match Key::from_bytes(key) {
        Some(key) => key.display(fields),
        None => key.iter().map(|b| format!("{b:02x}")).collect(),
    }
}

/// One field value in the field's notation; decimal (or `0x` hex) numbers
/// are accepted for every field.
pub fn parse_value(field: Field, word: &str) -> Result<u128, String> {
    let bad = |what: &str| format!("{word:?} is not {what} (for {})", field.name());
    let value = match field.format() {
        ValueFormat::Ipv4 => match word.parse::<Ipv4Addr>() {
            Ok(a) => u32::from(a) as u128,
            Err(_) => number(word).ok_or_else(|| bad("an IPv4 address like 10.0.0.1"))?,
        },
        ValueFormat::Ipv6 => match word.parse::<Ipv6Addr>() {
            Ok(a) => u128::from(a),
            Err(_) => number(word).ok_or_else(|| bad("an IPv6 address like 2001:db8::1"))?,
        },
        ValueFormat::Mac => mac(word)
            .or_else(|| number(word))
            .ok_or_else(|| bad("a MAC address like 02:00:00:00:00:01"))?,
        ValueFormat::TcpFlags => tcp_flags(word)
            .or_else(|| number(word))
            .ok_or_else(|| bad("TCP flags like syn|ack"))?,
        ValueFormat::Decimal | ValueFormat::Hex => number(word).ok_or_else(|| bad("a number"))?,
    };
    if field.bits() < 128 && value >> field.bits() != 0 {
        return Err(format!(
            "{word} does not fit {} ({} bits)",
            field.name(),
            field.bits()
        ));
    }
    Ok(value)
}

fn number(word: &str) -> Option<u128> {
    match word.strip_prefix("0x").or_else(|| word.strip_prefix("0X")) {
        Some(hex) => u128::from_str_radix(hex, 16).ok(),
        None => word.parse().ok(),
    }
}

fn mac(word: &str) -> Option<u128> {
    let parts: Vec<&str> = word.split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut value = 0u128;
    for part in parts {
        if part.is_empty() || part.len() > 2 {
            return None;
        }
        value = (value << 8) | u8::from_str_radix(part, 16).ok()? as u128;
    }
    Some(value)
}

fn tcp_flags(word: &str) -> Option<u128> {
    let mut value = 0u128;
    for name in word.split('|') {
        let bit = TCP_FLAG_NAMES
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))?;
        value |= 1 << bit;
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_flows_prints() {
        let fields = [
            Field::IpSrc,
            Field::TcpDport,
            Field::EthSrc,
            Field::TcpFlags,
        ];
        let text = "10.0.0.1 22 02:00:00:00:00:01 syn|ack";
        let key = parse_key(&fields, text).unwrap();
        assert_eq!(
            key,
            [10, 0, 0, 1, 0, 22, 2, 0, 0, 0, 0, 1, 0x12],
            "big-endian, key_bytes per field"
        );
        assert_eq!(format_key(&fields, &key), text);
    }

    #[test]
    fn ipv6_and_numbers() {
        let key = parse_key(&[Field::Ip6Src], "2001:db8::1").unwrap();
        assert_eq!(key.len(), 16);
        assert_eq!(format_key(&[Field::Ip6Src], &key), "2001:db8::1");
        assert_eq!(parse_key(&[Field::EthType], "0x0800").unwrap(), [8, 0]);
        assert_eq!(
            parse_key(&[Field::IpSrc], "167772161").unwrap(),
            [10, 0, 0, 1]
        );
    }

    #[test]
    fn refuses_bad_keys_with_a_reason() {
        let fields = [Field::IpSrc, Field::UdpDport];
        assert!(parse_key(&fields, "10.0.0.1")
            .unwrap_err()
            .contains("ip.src udp.dport"));
        assert!(parse_key(&fields, "10.0.0.300 1")
            .unwrap_err()
            .contains("IPv4"));
        assert!(parse_key(&fields, "10.0.0.1 70000")
            .unwrap_err()
            .contains("16 bits"));
        assert!(parse_key(&[Field::EthSrc], "02:00:00:00:00").is_err());
        assert!(parse_key(&[Field::TcpFlags], "syn|nope").is_err());
        assert!(parse_key(&[Field::VlanId], "4096").is_err());
    }
}
