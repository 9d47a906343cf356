//! Packed flow keys: the key fields' values, big-endian, each in
//! `Field::key_bytes()` bytes, concatenated in declaration order with no
//! padding. The compiled program packs its map keys the same way, so a key
//! read from the kernel compares equal to one built here.

use std::fmt;
use std::hash::{Hash, Hasher};

use flowstate_wire::{format_value, Field, Headers};

/// Longest possible key: every field of the catalogue once.
pub const MAX_KEY_BYTES: usize = 104;

/// A packed key, stored inline so that building one never allocates.
#[derive(Clone, Copy)]
pub struct Key {
    len: u8,
    bytes: [u8; MAX_KEY_BYTES],
}

impl Key {
    /// Pack `fields` of `headers`; `None` if one of them is absent.
    pub fn pack(fields: &[Field], headers: &Headers) -> Option<Key> {
        let mut key = Key {
            len: 0,
            bytes: [0; MAX_KEY_BYTES],
        };
        for &field in fields {
            let value = headers.get(field)?;
            let n = field.key_bytes();
            let start = key.len as usize;
            // A checked program names each field at most once per key, so
            // the key never exceeds MAX_KEY_BYTES; `get_mut` keeps that an
            // invariant rather than a panic.
            let slot = key.bytes.get_mut(start..start + n)?;
            slot.copy_from_slice(&value.to_be_bytes()[16 - n..]);
            key.len += n as u8;
        }
        Some(key)
    }

    /// A key from raw bytes (e.g. read back from a kernel map).
    pub fn from_bytes(raw: &[u8]) -> Option<Key> {
        if raw.len() > MAX_KEY_BYTES {
            return None;
        }
        let mut bytes = [0; MAX_KEY_BYTES];
        bytes[..raw.len()].copy_from_slice(raw);
        Some(Key {
            len: raw.len() as u8,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    /// The key's field values, unpacked.
    pub fn values(&self, fields: &[Field]) -> Vec<u128> {
        let mut at = 0;
        let mut out = Vec::with_capacity(fields.len());
        for &field in fields {
            let n = field.key_bytes();
            let mut v = 0u128;
            for &b in self.as_bytes().get(at..at + n).unwrap_or(&[]) {
                v = (v << 8) | b as u128;
            }
            out.push(v);
            at += n;
        }
        out
    }

    /// The key as a user writes it: `10.0.0.1` or `10.0.0.1 22` for
    /// several fields.
    pub fn display(&self, fields: &[Field]) -> String {
        fields
            .iter()
            .zip(self.values(fields))
            .map(|(f, v)| format_value(f.format(), v))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Key {
    /// The first 16 bytes as one word: most keys (addresses, ports) fit in
    /// it, so comparing and hashing them is two machine operations instead
    /// of a `memcmp` call. Bytes past `len` are always zero.
    fn head(&self) -> u128 {
        let mut head = [0u8; 16];
        head.copy_from_slice(&self.bytes[..16]);
        u128::from_ne_bytes(head)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.len == other.len
            && self.head() == other.head()
            && (self.len <= 16 || self.bytes[16..] == other.bytes[16..])
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(self.head());
        if self.len > 16 {
            state.write(&self.bytes[16..self.len as usize]);
        }
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> std::cmp::Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.as_bytes() {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_big_endian_without_padding() {
        let mut h = Headers::default();
        h.set(Field::IpSrc, 0x0a00_0001);
        h.set(Field::TcpDport, 22);
        h.set(Field::VlanId, 0xabc);
        let key = Key::pack(&[Field::IpSrc, Field::TcpDport, Field::VlanId], &h).unwrap();
        assert_eq!(key.as_bytes(), &[10, 0, 0, 1, 0, 22, 0x0a, 0xbc]);
        assert_eq!(
            key.display(&[Field::IpSrc, Field::TcpDport, Field::VlanId]),
            "10.0.0.1 22 2748"
        );
    }

    #[test]
    fn absent_field_gives_no_key() {
        let mut h = Headers::default();
        h.set(Field::IpSrc, 1);
        assert!(Key::pack(&[Field::IpSrc, Field::UdpDport], &h).is_none());
    }

    #[test]
    fn every_field_fits_the_inline_key() {
        let total: usize = Field::ALL.iter().map(|f| f.key_bytes()).sum();
        assert!(total <= MAX_KEY_BYTES);
    }
}
