//! BTF: the small type model callers describe map keys and values with, and
//! the encoder that turns it (plus the map and function descriptions the
//! object needs) into the bytes of a `.BTF` section.
//!
//! Format (kernel `include/uapi/linux/btf.h`): a 24-byte header, then the
//! type section (type ids start at 1; id 0 is `void`), then the string
//! section (offset 0 is the empty string). Everything is little endian here
//! because the object is.

use std::collections::HashMap;

use crate::ObjError;

/// A type a map key or value is made of.
///
/// Build them with the constructors ([`BtfType::u32`], [`BtfType::array`],
/// [`StructType::new`] and friends) so that `bpftool map dump` can show
/// named fields.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BtfType {
    Int(IntType),
    Array { element: Box<BtfType>, len: u32 },
    Struct(StructType),
}

/// An integer of 1, 2, 4, 8 or 16 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IntType {
    pub name: String,
    /// Size in bytes.
    pub size: u32,
    pub signed: bool,
}

/// A named struct with explicit member offsets (in bytes) and size.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StructType {
    /// May be empty for an anonymous struct.
    pub name: String,
    /// Size in bytes, padding included.
    pub size: u32,
    pub members: Vec<Member>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub name: String,
    pub ty: BtfType,
    /// Offset from the start of the struct, in bytes.
    pub offset: u32,
}

impl BtfType {
    pub fn int(name: impl Into<String>, size: u32, signed: bool) -> BtfType {
        BtfType::Int(IntType {
            name: name.into(),
            size,
            signed,
        })
    }

    pub fn u8() -> BtfType {
        BtfType::int("u8", 1, false)
    }

    pub fn u16() -> BtfType {
        BtfType::int("u16", 2, false)
    }

    pub fn u32() -> BtfType {
        BtfType::int("u32", 4, false)
    }

    pub fn u64() -> BtfType {
        BtfType::int("u64", 8, false)
    }

    pub fn i32() -> BtfType {
        BtfType::int("i32", 4, true)
    }

    pub fn i64() -> BtfType {
        BtfType::int("i64", 8, true)
    }

    pub fn array(element: BtfType, len: u32) -> BtfType {
        BtfType::Array {
            element: Box::new(element),
            len,
        }
    }

    /// `struct bpf_spin_lock { u32 val; }`: the kernel recognises the lock
    /// in a map value by this exact name and size.
    pub fn spin_lock() -> BtfType {
        StructType::new("bpf_spin_lock")
            .field("val", BtfType::u32())
            .into()
    }

    /// Size in bytes. Saturates instead of overflowing; [`BtfType::validate`]
    /// rejects types whose size does not fit in a `u32`.
    pub fn size(&self) -> u32 {
        match self {
            BtfType::Int(int) => int.size,
            BtfType::Array { element, len } => element.size().saturating_mul(*len),
            BtfType::Struct(st) => st.size,
        }
    }

    /// Alignment in bytes under the C rules (at least 1).
    pub fn align(&self) -> u32 {
        match self {
            BtfType::Int(int) => int.size.clamp(1, 8),
            BtfType::Array { element, .. } => element.align(),
            BtfType::Struct(st) => st.members.iter().map(|m| m.ty.align()).max().unwrap_or(1),
        }
    }

    /// Checks what the kernel's BTF loader would reject, with a message
    /// naming the offending part. `context` names the map the type is for.
    pub fn validate(&self, context: &str) -> Result<(), ObjError> {
        let invalid = |reason: String| ObjError::InvalidType {
            context: context.to_string(),
            reason,
        };
        match self {
            BtfType::Int(int) => {
                if !is_identifier(&int.name) {
                    return Err(invalid(format!(
                        "integer name {:?} is not an identifier",
                        int.name
                    )));
                }
                if !matches!(int.size, 1 | 2 | 4 | 8 | 16) {
                    return Err(invalid(format!(
                        "integer {} has size {}, expected 1, 2, 4, 8 or 16",
                        int.name, int.size
                    )));
                }
            }
            BtfType::Array { element, len } => {
                element.validate(context)?;
                if element.size().checked_mul(*len).is_none() {
                    return Err(invalid(format!("array of {len} elements is too large")));
                }
            }
            BtfType::Struct(st) => {
                if !st.name.is_empty() && !is_identifier(&st.name) {
                    return Err(invalid(format!(
                        "struct name {:?} is not an identifier",
                        st.name
                    )));
                }
                for (index, member) in st.members.iter().enumerate() {
                    if !is_identifier(&member.name) {
                        return Err(invalid(format!(
                            "member name {:?} of struct {} is not an identifier",
                            member.name, st.name
                        )));
                    }
                    if st.members[..index].iter().any(|m| m.name == member.name) {
                        return Err(invalid(format!(
                            "struct {} has two members named {}",
                            st.name, member.name
                        )));
                    }
                    member.ty.validate(context)?;
                    let end = u64::from(member.offset) + u64::from(member.ty.size());
                    if end > u64::from(st.size) {
                        return Err(invalid(format!(
                            "member {} of struct {} ends at byte {end}, past the struct size {}",
                            member.name, st.name, st.size
                        )));
                    }
                    // BTF member offsets are in bits and stored in a u32.
                    if member.offset > u32::MAX / 8 {
                        return Err(invalid(format!("member {} offset too large", member.name)));
                    }
                }
            }
        }
        Ok(())
    }
}

impl StructType {
    /// An empty struct; add members with [`StructType::field`] (C layout).
    pub fn new(name: impl Into<String>) -> StructType {
        StructType {
            name: name.into(),
            size: 0,
            members: Vec::new(),
        }
    }

    /// Appends a member at the next offset aligned for its type and grows
    /// the size to the C layout (padded to the struct's alignment).
    pub fn field(mut self, name: impl Into<String>, ty: BtfType) -> StructType {
        let align = ty.align();
        let unpadded = self
            .members
            .last()
            .map_or(0, |last| last.offset + last.ty.size());
        let offset = unpadded.next_multiple_of(align);
        let end = offset.saturating_add(ty.size());
        self.members.push(Member {
            name: name.into(),
            ty,
            offset,
        });
        let struct_align = self.members.iter().map(|m| m.ty.align()).max().unwrap_or(1);
        self.size = end.next_multiple_of(struct_align);
        self
    }

    /// A member's offset by name, for code that reads or writes the value.
    pub fn offset_of(&self, name: &str) -> Option<u32> {
        self.members
            .iter()
            .find(|m| m.name == name)
            .map(|m| m.offset)
    }
}

impl From<StructType> for BtfType {
    fn from(st: StructType) -> BtfType {
        BtfType::Struct(st)
    }
}

/// A C identifier, which is what the kernel accepts as a BTF type or
/// member name.
pub(crate) fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

// Kind numbers from `include/uapi/linux/btf.h`.
const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_FWD: u32 = 7;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;

const INT_SIGNED: u32 = 1 << 24;
const LINKAGE_STATIC: u32 = 0;
const LINKAGE_GLOBAL: u32 = 1;
const BTF_MAGIC: u16 = 0xeb9f;
const BTF_HEADER_LEN: u32 = 24;

/// One entry of a DATASEC: a VAR and where it lives in the section.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecVar {
    pub var: u32,
    pub offset: u32,
    pub size: u32,
}

/// Accumulates BTF types and strings; types are deduplicated by value.
#[derive(Debug, Default)]
pub(crate) struct BtfWriter {
    types: Vec<u8>,
    strings: Vec<u8>,
    string_offsets: HashMap<String, u32>,
    next_id: u32,
    model_ids: HashMap<BtfType, u32>,
    array_ids: HashMap<(u32, u32), u32>,
    ptr_ids: HashMap<u32, u32>,
    index_type: Option<u32>,
}

impl BtfWriter {
    pub fn new() -> BtfWriter {
        BtfWriter {
            strings: vec![0],
            next_id: 1,
            ..BtfWriter::default()
        }
    }

    pub(crate) fn string(&mut self, s: &str) -> u32 {
        if s.is_empty() {
            return 0;
        }
        if let Some(&offset) = self.string_offsets.get(s) {
            return offset;
        }
        let offset = self.strings.len() as u32;
        self.strings.extend_from_slice(s.as_bytes());
        self.strings.push(0);
        self.string_offsets.insert(s.to_string(), offset);
        offset
    }

    /// Writes the common `btf_type` header plus `extra` words; returns the id.
    fn push(&mut self, name: &str, kind: u32, vlen: u32, size_or_type: u32, extra: &[u32]) -> u32 {
        let name_off = self.string(name);
        let info = (kind << 24) | (vlen & 0xffff);
        for word in [name_off, info, size_or_type].iter().chain(extra) {
            self.types.extend_from_slice(&word.to_le_bytes());
        }
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Adds a model type (and everything it refers to); returns its id.
    pub fn add_type(&mut self, ty: &BtfType) -> u32 {
        if let Some(&id) = self.model_ids.get(ty) {
            return id;
        }
        let id = match ty {
            BtfType::Int(int) => self.int(&int.name, int.size, int.signed),
            BtfType::Array { element, len } => {
                let element = self.add_type(element);
                self.array(element, *len)
            }
            BtfType::Struct(st) => {
                let members: Vec<(u32, u32, u32)> = st
                    .members
                    .iter()
                    .map(|m| (self.string(&m.name), self.add_type(&m.ty), m.offset * 8))
                    .collect();
                let mut extra = Vec::with_capacity(members.len() * 3);
                for (name_off, type_id, bit_offset) in members {
                    extra.extend_from_slice(&[name_off, type_id, bit_offset]);
                }
                self.push(
                    &st.name,
                    KIND_STRUCT,
                    st.members.len() as u32,
                    st.size,
                    &extra,
                )
            }
        };
        self.model_ids.insert(ty.clone(), id);
        id
    }

    pub fn int(&mut self, name: &str, size: u32, signed: bool) -> u32 {
        let encoding = if signed { INT_SIGNED } else { 0 };
        self.push(name, KIND_INT, 0, size, &[encoding | (size * 8)])
    }

    /// `T[len]`, indexed by clang's `__ARRAY_SIZE_TYPE__`.
    pub fn array(&mut self, element: u32, len: u32) -> u32 {
        if let Some(&id) = self.array_ids.get(&(element, len)) {
            return id;
        }
        let index = match self.index_type {
            Some(id) => id,
            None => {
                let id = self.int("__ARRAY_SIZE_TYPE__", 4, false);
                self.index_type = Some(id);
                id
            }
        };
        let id = self.push("", KIND_ARRAY, 0, 0, &[element, index, len]);
        self.array_ids.insert((element, len), id);
        id
    }

    pub fn ptr(&mut self, target: u32) -> u32 {
        if let Some(&id) = self.ptr_ids.get(&target) {
            return id;
        }
        let id = self.push("", KIND_PTR, 0, target, &[]);
        self.ptr_ids.insert(target, id);
        id
    }

    /// A forward declaration of a struct (`struct xdp_md;`).
    pub fn fwd_struct(&mut self, name: &str) -> u32 {
        self.push(name, KIND_FWD, 0, 0, &[])
    }

    /// An anonymous struct whose members are all 8-byte pointers, as a BTF
    /// map definition is: `struct { int (*type)[N]; K *key; ... }`.
    pub fn pointer_struct(&mut self, members: &[(&str, u32)]) -> u32 {
        let mut extra = Vec::with_capacity(members.len() * 3);
        for (index, (name, type_id)) in members.iter().enumerate() {
            let name_off = self.string(name);
            extra.extend_from_slice(&[name_off, *type_id, index as u32 * 64]);
        }
        self.push(
            "",
            KIND_STRUCT,
            members.len() as u32,
            members.len() as u32 * 8,
            &extra,
        )
    }

    pub fn func_proto(&mut self, ret: u32, params: &[(&str, u32)]) -> u32 {
        let mut extra = Vec::with_capacity(params.len() * 2);
        for (name, type_id) in params {
            let name_off = self.string(name);
            extra.extend_from_slice(&[name_off, *type_id]);
        }
        self.push("", KIND_FUNC_PROTO, params.len() as u32, ret, &extra)
    }

    pub fn func_global(&mut self, name: &str, proto: u32) -> u32 {
        self.push(name, KIND_FUNC, LINKAGE_GLOBAL, proto, &[])
    }

    /// A `static` function: a bpf-to-bpf subprogram, whose arguments the
    /// verifier takes from the caller rather than from BTF.
    pub fn func_static(&mut self, name: &str, proto: u32) -> u32 {
        self.push(name, KIND_FUNC, LINKAGE_STATIC, proto, &[])
    }

    pub fn var_global(&mut self, name: &str, type_id: u32) -> u32 {
        self.push(name, KIND_VAR, 0, type_id, &[LINKAGE_GLOBAL])
    }

    pub fn datasec(&mut self, name: &str, size: u32, vars: &[SecVar]) -> u32 {
        let mut extra = Vec::with_capacity(vars.len() * 3);
        for v in vars {
            extra.extend_from_slice(&[v.var, v.offset, v.size]);
        }
        self.push(name, KIND_DATASEC, vars.len() as u32, size, &extra)
    }

    /// The `.BTF` section bytes.
    pub fn finish(self) -> Vec<u8> {
        let type_len = self.types.len() as u32;
        let str_len = self.strings.len() as u32;
        let mut out = Vec::with_capacity((BTF_HEADER_LEN + type_len + str_len) as usize);
        out.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        for word in [BTF_HEADER_LEN, 0, type_len, type_len, str_len] {
            out.extend_from_slice(&word.to_le_bytes());
        }
        out.extend_from_slice(&self.types);
        out.extend_from_slice(&self.strings);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_layout_pads_members_and_size() {
        let st = StructType::new("entry")
            .field("state", BtfType::u16())
            .field("hits", BtfType::u64())
            .field("flag", BtfType::u8());
        let offsets: Vec<u32> = st.members.iter().map(|m| m.offset).collect();
        assert_eq!(offsets, [0, 8, 16]);
        assert_eq!(st.size, 24);
        assert_eq!(st.offset_of("hits"), Some(8));
        assert_eq!(st.offset_of("missing"), None);
    }

    #[test]
    fn arrays_take_element_alignment() {
        let st = StructType::new("key")
            .field("proto", BtfType::u8())
            .field("addr", BtfType::array(BtfType::u8(), 16))
            .field("port", BtfType::u16());
        assert_eq!(st.offset_of("addr"), Some(1));
        assert_eq!(st.offset_of("port"), Some(18));
        assert_eq!(st.size, 20);
    }

    #[test]
    fn spin_lock_is_four_bytes_named_for_the_kernel() {
        let lock = BtfType::spin_lock();
        assert_eq!(lock.size(), 4);
        assert!(matches!(&lock, BtfType::Struct(st) if st.name == "bpf_spin_lock"));
    }

    #[test]
    fn validate_rejects_member_past_end() {
        let ty = BtfType::Struct(StructType {
            name: "v".into(),
            size: 4,
            members: vec![Member {
                name: "x".into(),
                ty: BtfType::u64(),
                offset: 0,
            }],
        });
        let err = ty.validate("map m").unwrap_err().to_string();
        assert!(err.contains("past the struct size"), "{err}");
    }

    #[test]
    fn validate_rejects_bad_names_sizes_and_duplicates() {
        assert!(BtfType::int("u24", 3, false).validate("m").is_err());
        assert!(BtfType::int("1x", 4, false).validate("m").is_err());
        let dup = StructType::new("s")
            .field("a", BtfType::u32())
            .field("a", BtfType::u32());
        assert!(BtfType::Struct(dup).validate("m").is_err());
        let bad_member = StructType::new("s").field("a-b", BtfType::u32());
        assert!(BtfType::Struct(bad_member).validate("m").is_err());
        let huge = BtfType::array(BtfType::u64(), u32::MAX);
        assert!(huge.validate("m").is_err());
        assert!(BtfType::array(BtfType::u64(), 4).validate("m").is_ok());
    }

    #[test]
    fn writer_dedups_types_and_strings() {
        let mut w = BtfWriter::new();
        let a = w.add_type(&BtfType::u32());
        let b = w.add_type(&BtfType::u32());
        assert_eq!(a, b);
        let arr1 = w.array(a, 4);
        let arr2 = w.array(a, 4);
        assert_eq!(arr1, arr2);
        assert_eq!(w.ptr(arr1), w.ptr(arr1));
        // "u32" and "__ARRAY_SIZE_TYPE__" once each, plus the leading NUL.
        assert_eq!(w.strings.len(), 1 + 4 + 20);
    }

    #[test]
    fn header_describes_sections() {
        let mut w = BtfWriter::new();
        w.add_type(&BtfType::u64());
        let bytes = w.finish();
        assert_eq!(&bytes[0..4], &[0x9f, 0xeb, 1, 0]);
        let word = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        assert_eq!(word(4), 24); // hdr_len
        assert_eq!(word(8), 0); // type_off
        assert_eq!(word(12), 16); // one INT: 12-byte header + 4-byte encoding
        assert_eq!(word(16), 16); // str_off
        assert_eq!(word(20), 5); // "\0u64\0"
        assert_eq!(bytes.len(), 24 + 16 + 5);
        // INT encoding: unsigned, 64 bits.
        assert_eq!(word(24 + 12), 64);
    }
}
