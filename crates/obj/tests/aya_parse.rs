//! Parses what the writer produces with aya-obj (the parser aya loads
//! with) and with the `object` crate's reader, and checks maps, programs,
//! relocations and BTF.

use aya_obj::maps::Map;
use aya_obj::programs::XdpAttachType;
use aya_obj::{Object as AyaObject, ProgramSection as AyaSection};
use flowstate_obj::{
    BtfType, MapDef, MapKind, ObjError, ObjectBuilder, ProgramDef, ProgramSection, StructType,
};
use object::{Object as _, ObjectSection as _, ObjectSymbol as _, RelocationFlags};

/// Hand-encoded instructions: enough for these tests, without depending on
/// flowstate-asm.
mod insn {
    fn encode(opcode: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
        let mut slot = [0u8; 8];
        slot[0] = opcode;
        slot[1] = (src << 4) | dst;
        slot[2..4].copy_from_slice(&off.to_le_bytes());
        slot[4..8].copy_from_slice(&imm.to_le_bytes());
        slot
    }

    pub fn mov64_imm(dst: u8, imm: i32) -> Vec<u8> {
        encode(0xb7, dst, 0, 0, imm).to_vec()
    }

    pub fn exit() -> Vec<u8> {
        encode(0x95, 0, 0, 0, 0).to_vec()
    }

    /// `ld_imm64 dst, 0`: two slots; the map relocation fills it in.
    pub fn ld_map(dst: u8) -> Vec<u8> {
        let mut both = encode(0x18, dst, 0, 0, 0).to_vec();
        both.extend_from_slice(&[0; 8]);
        both
    }
}

fn program(name: &str, section: ProgramSection, parts: &[Vec<u8>]) -> ProgramDef {
    ProgramDef {
        name: name.into(),
        section,
        insns: parts.concat(),
        map_relocs: Vec::new(),
    }
}

fn flow_value() -> BtfType {
    StructType::new("flow_entry")
        .field("state", BtfType::u32())
        .field("lock", BtfType::spin_lock())
        .field("packets", BtfType::u64())
        .field("last_seen", BtfType::i64())
        .into()
}

/// Two XDP programs and one TC program over a hash, an array and a ring buffer.
fn sample() -> ObjectBuilder {
    let mut builder = ObjectBuilder::new();
    builder
        .add_map(MapDef::new(
            "flows",
            MapKind::Hash,
            BtfType::u32(),
            flow_value(),
            1024,
        ))
        .add_map(MapDef::new(
            "verdict",
            MapKind::Array,
            BtfType::u32(),
            BtfType::u32(),
            1,
        ))
        .add_map(MapDef::ring_buf("events", 1 << 16))
        .add_map(
            MapDef::new(
                "lru",
                MapKind::LruHash,
                BtfType::array(BtfType::u8(), 6),
                BtfType::u64(),
                64,
            )
            .with_flags(0),
        );
    let mut first = program(
        "first",
        ProgramSection::Xdp,
        &[
            insn::ld_map(1),
            insn::ld_map(2),
            insn::mov64_imm(0, 2),
            insn::exit(),
        ],
    );
    first.map_relocs = vec![(0, "flows".into()), (2, "verdict".into())];
    builder.add_program(first);
    builder.add_program(program(
        "second",
        ProgramSection::Xdp,
        &[insn::mov64_imm(0, 1), insn::exit()],
    ));
    let mut tc = program(
        "classify",
        ProgramSection::Classifier,
        &[insn::ld_map(1), insn::mov64_imm(0, 0), insn::exit()],
    );
    tc.map_relocs = vec![(0, "events".into())];
    builder.add_program(tc);
    builder
}

#[test]
fn aya_sees_programs_in_their_sections() {
    let bytes = sample().build().unwrap();
    let obj = AyaObject::parse(&bytes).unwrap();
    assert_eq!(obj.programs.len(), 3);
    for name in ["first", "second"] {
        assert!(
            matches!(
                obj.programs[name].section,
                AyaSection::Xdp {
                    frags: false,
                    attach_type: XdpAttachType::Interface
                }
            ),
            "{name}: {:?}",
            obj.programs[name].section
        );
    }
    assert!(matches!(
        obj.programs["classify"].section,
        AyaSection::SchedClassifier
    ));
    assert_eq!(obj.license.to_str().unwrap(), "GPL");
}

#[test]
fn aya_reads_btf_map_definitions() {
    let bytes = sample().build().unwrap();
    let obj = AyaObject::parse(&bytes).unwrap();
    assert_eq!(obj.maps.len(), 4);
    let expect = [
        // (name, type, key size, value size, max entries)
        ("flows", 1, 4, 24, 1024),
        ("verdict", 2, 4, 4, 1),
        ("events", 27, 0, 0, 1 << 16),
        ("lru", 9, 6, 8, 64),
    ];
    for (name, map_type, key_size, value_size, max_entries) in expect {
        let map = &obj.maps[name];
        assert!(matches!(map, Map::Btf(_)), "{name} is not a BTF map");
        assert_eq!(map.map_type(), map_type, "{name}");
        assert_eq!(map.key_size(), key_size, "{name}");
        assert_eq!(map.value_size(), value_size, "{name}");
        assert_eq!(map.max_entries(), max_entries, "{name}");
        assert_eq!(map.map_flags(), 0, "{name}");
    }
}

#[test]
fn map_flags_reach_the_definition() {
    let mut builder = ObjectBuilder::new();
    builder
        .add_map(MapDef::new("h", MapKind::Hash, BtfType::u32(), BtfType::u32(), 8).with_flags(1));
    builder.add_program(program(
        "p",
        ProgramSection::Xdp,
        &[insn::mov64_imm(0, 2), insn::exit()],
    ));
    let obj = AyaObject::parse(&builder.build().unwrap()).unwrap();
    assert_eq!(obj.maps["h"].map_flags(), 1);
}

#[test]
fn device_map_has_sizes_not_types() {
    let mut builder = ObjectBuilder::new();
    builder.add_map(MapDef::new(
        "ports",
        MapKind::DevMap,
        BtfType::u32(),
        BtfType::u32(),
        8,
    ));
    builder.add_program(program(
        "p",
        ProgramSection::Xdp,
        &[insn::mov64_imm(0, 2), insn::exit()],
    ));
    let bytes = builder.build().unwrap();
    let obj = AyaObject::parse(&bytes).unwrap();
    let map = &obj.maps["ports"];
    assert_eq!(map.map_type(), 14);
    assert_eq!((map.key_size(), map.value_size()), (4, 4));
    let btf = btf_reader::Btf::parse(btf_section(&bytes));
    let def = btf.map_definition("ports");
    let names: Vec<&str> = def.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["type", "key_size", "value_size", "max_entries"]);
}

#[test]
fn relocations_point_at_map_symbols() {
    let bytes = sample().build().unwrap();
    let file = object::File::parse(&*bytes).unwrap();
    assert_eq!(file.architecture(), object::Architecture::Bpf);
    let xdp = file.section_by_name("xdp").unwrap();
    let relocs: Vec<(u64, String, i64, u32)> = xdp
        .relocations()
        .map(|(offset, reloc)| {
            let object::RelocationTarget::Symbol(index) = reloc.target() else {
                panic!("relocation against a non-symbol");
            };
            let RelocationFlags::Elf { r_type } = reloc.flags() else {
                panic!("not an ELF relocation");
            };
            let name = file
                .symbol_by_index(index)
                .unwrap()
                .name()
                .unwrap()
                .to_string();
            (offset, name, reloc.addend(), r_type)
        })
        .collect();
    assert_eq!(
        relocs,
        [
            (0, "flows".to_string(), 0, object::elf::R_BPF_64_64),
            (16, "verdict".to_string(), 0, object::elf::R_BPF_64_64),
        ]
    );
    let tc = file.section_by_name("classifier").unwrap();
    assert_eq!(tc.relocations().count(), 1);
}

#[test]
fn symbols_are_global_with_sizes() {
    let bytes = sample().build().unwrap();
    let file = object::File::parse(&*bytes).unwrap();
    let symbol = |name: &str| {
        file.symbols()
            .find(|s| s.name() == Ok(name))
            .unwrap_or_else(|| panic!("no symbol {name}"))
    };
    let first = symbol("first");
    assert_eq!(first.kind(), object::SymbolKind::Text);
    assert!(first.is_global());
    assert_eq!((first.address(), first.size()), (0, 48));
    let second = symbol("second");
    assert_eq!((second.address(), second.size()), (48, 16));
    // flows: type, key, value, max_entries = 4 pointers.
    let flows = symbol("flows");
    assert_eq!(flows.kind(), object::SymbolKind::Data);
    assert_eq!((flows.address(), flows.size()), (0, 32));
    let verdict = symbol("verdict");
    assert_eq!((verdict.address(), verdict.size()), (32, 32));
    // events: type and max_entries only.
    assert_eq!(symbol("events").size(), 16);
    let maps = file.section_by_name(".maps").unwrap();
    assert_eq!(maps.size(), 32 + 32 + 16 + 32);
    let license = file.section_by_name("license").unwrap();
    assert_eq!(license.data().unwrap(), b"GPL\0");
}

#[test]
fn btf_ids_agree_with_aya() {
    let bytes = sample().build().unwrap();
    let obj = AyaObject::parse(&bytes).unwrap();
    let btf = obj.btf.as_ref().expect("object has BTF");
    let ours = btf_reader::Btf::parse(btf_section(&bytes));
    for (name, kind, our_kind) in [
        (
            "flow_entry",
            aya_obj::btf::BtfKind::Struct,
            btf_reader::STRUCT,
        ),
        (
            "bpf_spin_lock",
            aya_obj::btf::BtfKind::Struct,
            btf_reader::STRUCT,
        ),
        ("first", aya_obj::btf::BtfKind::Func, btf_reader::FUNC),
        ("second", aya_obj::btf::BtfKind::Func, btf_reader::FUNC),
        ("classify", aya_obj::btf::BtfKind::Func, btf_reader::FUNC),
        ("flows", aya_obj::btf::BtfKind::Var, btf_reader::VAR),
        (".maps", aya_obj::btf::BtfKind::DataSec, btf_reader::DATASEC),
    ] {
        let id = btf
            .id_by_type_name_kind(name, kind)
            .unwrap_or_else(|e| panic!("aya finds no {name}: {e}"));
        assert_eq!(ours.id_of(name, our_kind), id, "{name}");
    }
    // aya writes back what it read, byte for byte.
    assert_eq!(btf.to_bytes(), btf_section(&bytes));
}

#[test]
fn btf_describes_maps_like_clang() {
    let bytes = sample().build().unwrap();
    let btf = btf_reader::Btf::parse(btf_section(&bytes));
    let flows = btf.map_definition("flows");
    let names: Vec<&str> = flows.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["type", "key", "value", "max_entries"]);
    // `int (*type)[1]`: pointer to an array whose length is the number.
    assert_eq!(btf.pointed_array_len(flows[0].1), 1);
    assert_eq!(btf.pointed_array_len(flows[3].1), 1024);
    let value = btf.pointee(flows[2].1);
    assert_eq!(btf.name(value), "flow_entry");
    assert_eq!(btf.size(value), 24);
    assert_eq!(
        btf.members(value),
        [
            ("state".to_string(), 0),
            ("lock".to_string(), 32),
            ("packets".to_string(), 64),
            ("last_seen".to_string(), 128),
        ]
    );
    let events = btf.map_definition("events");
    let names: Vec<&str> = events.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["type", "max_entries"]);
    assert_eq!(btf.pointed_array_len(events[0].1), 27);
    // The DATASEC lists every map at its symbol's offset and size.
    assert_eq!(
        btf.datasec(".maps"),
        [
            ("flows".to_string(), 0, 32),
            ("verdict".to_string(), 32, 32),
            ("events".to_string(), 64, 16),
            ("lru".to_string(), 80, 32),
        ]
    );
}

#[test]
fn btf_functions_take_the_hook_context() {
    let bytes = sample().build().unwrap();
    let btf = btf_reader::Btf::parse(btf_section(&bytes));
    assert_eq!(btf.func_context("first"), "xdp_md");
    assert_eq!(btf.func_context("second"), "xdp_md");
    assert_eq!(btf.func_context("classify"), "__sk_buff");
}

fn btf_section(elf: &[u8]) -> &[u8] {
    let file = object::File::parse(elf).unwrap();
    let data = file.section_by_name(".BTF").unwrap().data().unwrap();
    // Re-borrow from the input: the section data is a slice of it.
    let start = data.as_ptr() as usize - elf.as_ptr() as usize;
    &elf[start..start + data.len()]
}

/// A minimal BTF decoder, independent of the writer, for round-trip checks.
mod btf_reader {
    pub const INT: u32 = 1;
    pub const PTR: u32 = 2;
    pub const ARRAY: u32 = 3;
    pub const STRUCT: u32 = 4;
    pub const FWD: u32 = 7;
    pub const FUNC: u32 = 12;
    pub const FUNC_PROTO: u32 = 13;
    pub const VAR: u32 = 14;
    pub const DATASEC: u32 = 15;

    pub struct Type {
        pub kind: u32,
        pub name: String,
        pub vlen: u32,
        pub size_or_type: u32,
        pub extra: Vec<u32>,
        /// Names of STRUCT members or FUNC_PROTO parameters, in order.
        pub member_names: Vec<String>,
    }

    pub struct Btf {
        /// Index 0 is `void`.
        pub types: Vec<Option<Type>>,
    }

    fn word(bytes: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap())
    }

    impl Btf {
        pub fn parse(bytes: &[u8]) -> Btf {
            assert_eq!(&bytes[0..4], &[0x9f, 0xeb, 1, 0], "magic, version, flags");
            let header_len = word(bytes, 4) as usize;
            let (type_off, type_len) = (word(bytes, 8) as usize, word(bytes, 12) as usize);
            let (str_off, str_len) = (word(bytes, 16) as usize, word(bytes, 20) as usize);
            assert_eq!(header_len + str_off + str_len, bytes.len());
            let types_bytes = &bytes[header_len + type_off..header_len + type_off + type_len];
            let strings = &bytes[header_len + str_off..header_len + str_off + str_len];
            assert_eq!(strings[0], 0);
            let string = |offset: u32| {
                let rest = &strings[offset as usize..];
                let end = rest.iter().position(|&b| b == 0).unwrap();
                String::from_utf8(rest[..end].to_vec()).unwrap()
            };
            let mut types = vec![None];
            let mut at = 0;
            while at < types_bytes.len() {
                let info = word(types_bytes, at + 4);
                let kind = (info >> 24) & 0x1f;
                let vlen = info & 0xffff;
                let extra_words = match kind {
                    INT | VAR => 1,
                    ARRAY => 3,
                    STRUCT | DATASEC => 3 * vlen as usize,
                    FUNC_PROTO => 2 * vlen as usize,
                    PTR | FWD | FUNC => 0,
                    other => panic!("unexpected BTF kind {other}"),
                };
                let extra: Vec<u32> = (0..extra_words)
                    .map(|i| word(types_bytes, at + 12 + 4 * i))
                    .collect();
                let member_names = match kind {
                    STRUCT => extra.chunks(3).map(|m| string(m[0])).collect(),
                    FUNC_PROTO => extra.chunks(2).map(|p| string(p[0])).collect(),
                    _ => Vec::new(),
                };
                types.push(Some(Type {
                    kind,
                    name: string(word(types_bytes, at)),
                    vlen,
                    size_or_type: word(types_bytes, at + 8),
                    extra,
                    member_names,
                }));
                at += 12 + 4 * extra_words;
            }
            assert_eq!(at, types_bytes.len());
            Btf { types }
        }

        fn ty(&self, id: u32) -> &Type {
            self.types[id as usize].as_ref().expect("not void")
        }

        pub fn id_of(&self, name: &str, kind: u32) -> u32 {
            let matches: Vec<usize> = (1..self.types.len())
                .filter(|&i| {
                    let t = self.types[i].as_ref().unwrap();
                    t.kind == kind && t.name == name
                })
                .collect();
            assert_eq!(matches.len(), 1, "{name} of kind {kind}");
            matches[0] as u32
        }

        pub fn name(&self, id: u32) -> &str {
            &self.ty(id).name
        }

        pub fn size(&self, id: u32) -> u32 {
            self.ty(id).size_or_type
        }

        pub fn pointee(&self, id: u32) -> u32 {
            let ty = self.ty(id);
            assert_eq!(ty.kind, PTR);
            assert!(ty.name.is_empty(), "pointers are anonymous");
            ty.size_or_type
        }

        pub fn pointed_array_len(&self, id: u32) -> u32 {
            let array = self.ty(self.pointee(id));
            assert_eq!(array.kind, ARRAY);
            assert_eq!(self.ty(array.extra[0]).kind, INT, "element is int");
            assert_eq!(self.ty(array.extra[1]).kind, INT, "index is int");
            array.extra[2]
        }

        /// Member names with bit offsets.
        pub fn members(&self, id: u32) -> Vec<(String, u32)> {
            let ty = self.ty(id);
            assert_eq!(ty.kind, STRUCT);
            assert_eq!(ty.extra.len(), 3 * ty.vlen as usize);
            ty.member_names
                .iter()
                .cloned()
                .zip(ty.extra.chunks(3).map(|m| m[2]))
                .collect()
        }

        /// `(member name, member type)` of a map's definition struct.
        pub fn map_definition(&self, map: &str) -> Vec<(String, u32)> {
            let var = self.ty(self.id_of(map, VAR));
            assert_eq!(var.extra, [1], "global linkage");
            let def = self.ty(var.size_or_type);
            assert_eq!(def.kind, STRUCT);
            assert!(def.name.is_empty(), "map definitions are anonymous");
            assert_eq!(def.size_or_type, 8 * def.vlen);
            def.extra
                .chunks(3)
                .zip(&def.member_names)
                .enumerate()
                .map(|(index, (m, name))| {
                    assert_eq!(m[2], 64 * index as u32, "pointer members are packed");
                    (name.clone(), m[1])
                })
                .collect()
        }

        pub fn datasec(&self, name: &str) -> Vec<(String, u32, u32)> {
            let sec = self.ty(self.id_of(name, DATASEC));
            let entries: Vec<(String, u32, u32)> = sec
                .extra
                .chunks(3)
                .map(|e| (self.ty(e[0]).name.clone(), e[1], e[2]))
                .collect();
            let end = entries.last().map_or(0, |(_, offset, size)| offset + size);
            assert_eq!(sec.size_or_type, end, "section size");
            entries
        }

        /// The struct name behind the single `ctx` pointer parameter.
        pub fn func_context(&self, func: &str) -> String {
            let func = self.ty(self.id_of(func, FUNC));
            assert_eq!(func.vlen, 1, "global linkage");
            let proto = self.ty(func.size_or_type);
            assert_eq!(proto.kind, FUNC_PROTO);
            assert_eq!(self.ty(proto.size_or_type).name, "int");
            assert_eq!(proto.vlen, 1);
            assert_eq!(proto.member_names, ["ctx"]);
            let context = self.ty(self.pointee(proto.extra[1]));
            // XDP's context is the whole struct (an extension's target
            // is matched by it); TC's a declaration.
            let expected = if context.name == "xdp_md" {
                STRUCT
            } else {
                FWD
            };
            assert_eq!(context.kind, expected, "{}", context.name);
            context.name.clone()
        }
    }
}

#[test]
fn empty_object_with_one_program_parses() {
    let mut builder = ObjectBuilder::new();
    builder.add_program(program(
        "pass",
        ProgramSection::Xdp,
        &[insn::mov64_imm(0, 2), insn::exit()],
    ));
    let obj = AyaObject::parse(&builder.build().unwrap()).unwrap();
    assert!(obj.maps.is_empty());
    assert_eq!(obj.programs.len(), 1);
}

fn build_error(edit: impl FnOnce(&mut ObjectBuilder)) -> ObjError {
    let mut builder = ObjectBuilder::new();
    builder.add_map(MapDef::new(
        "m",
        MapKind::Hash,
        BtfType::u32(),
        BtfType::u64(),
        4,
    ));
    edit(&mut builder);
    builder.build().unwrap_err()
}

#[test]
fn rejects_relocation_to_unknown_map() {
    let err = build_error(|b| {
        let mut p = program("p", ProgramSection::Xdp, &[insn::ld_map(1), insn::exit()]);
        p.map_relocs = vec![(0, "nope".into())];
        b.add_program(p);
    });
    assert_eq!(
        err,
        ObjError::UnknownMap {
            program: "p".into(),
            slot: 0,
            map: "nope".into()
        }
    );
}

#[test]
fn rejects_relocation_not_on_ld_imm64() {
    let err = build_error(|b| {
        let mut p = program(
            "p",
            ProgramSection::Xdp,
            &[insn::mov64_imm(0, 1), insn::exit(), insn::exit()],
        );
        p.map_relocs = vec![(0, "m".into())];
        b.add_program(p);
    });
    assert!(err.to_string().contains("not ld_imm64"), "{err}");
}

#[test]
fn rejects_relocation_past_the_end() {
    let err = build_error(|b| {
        let mut p = program("p", ProgramSection::Xdp, &[insn::exit()]);
        p.map_relocs = vec![(0, "m".into())];
        b.add_program(p);
    });
    assert!(err.to_string().contains("past the last slot"), "{err}");
    let err = build_error(|b| {
        let mut p = program("p", ProgramSection::Xdp, &[insn::exit()]);
        p.map_relocs = vec![(usize::MAX, "m".into())];
        b.add_program(p);
    });
    assert!(matches!(err, ObjError::InvalidProgram { .. }), "{err}");
}

#[test]
fn rejects_bad_instruction_lengths() {
    let err = build_error(|b| {
        b.add_program(ProgramDef {
            name: "p".into(),
            section: ProgramSection::Xdp,
            insns: vec![0; 12],
            map_relocs: vec![],
        });
    });
    assert!(err.to_string().contains("multiple of 8"), "{err}");
    let err = build_error(|b| {
        b.add_program(program("p", ProgramSection::Xdp, &[]));
    });
    assert!(err.to_string().contains("multiple of 8"), "{err}");
}

#[test]
fn rejects_duplicate_and_invalid_names() {
    let err = build_error(|b| {
        b.add_map(MapDef::new(
            "m",
            MapKind::Array,
            BtfType::u32(),
            BtfType::u32(),
            1,
        ));
    });
    assert!(
        matches!(err, ObjError::DuplicateName { what: "maps", .. }),
        "{err}"
    );
    let err = build_error(|b| {
        b.add_program(program("p", ProgramSection::Xdp, &[insn::exit()]));
        b.add_program(program("p", ProgramSection::Classifier, &[insn::exit()]));
    });
    assert!(
        matches!(
            err,
            ObjError::DuplicateName {
                what: "programs",
                ..
            }
        ),
        "{err}"
    );
    let err = build_error(|b| {
        b.add_program(program("my prog", ProgramSection::Xdp, &[insn::exit()]));
    });
    assert!(matches!(err, ObjError::InvalidName { .. }), "{err}");
    let err = build_error(|b| {
        b.license("GP\0L");
    });
    assert!(matches!(err, ObjError::InvalidLicense { .. }), "{err}");
}

#[test]
fn rejects_maps_the_kernel_would_refuse() {
    let cases = [
        MapDef::new("a", MapKind::Array, BtfType::u64(), BtfType::u32(), 1),
        MapDef::new("b", MapKind::Hash, BtfType::u32(), BtfType::u32(), 0),
        MapDef::ring_buf("c", 1000),
        MapDef::new("d", MapKind::DevMap, BtfType::u32(), BtfType::u64(), 4),
        MapDef {
            key: None,
            ..MapDef::new("e", MapKind::Hash, BtfType::u32(), BtfType::u32(), 4)
        },
        MapDef {
            key: Some(BtfType::u32()),
            ..MapDef::ring_buf("f", 4096)
        },
        MapDef::new(
            "g",
            MapKind::Hash,
            StructType::new("empty").into(),
            BtfType::u32(),
            4,
        ),
    ];
    for map in cases {
        let name = map.name.clone();
        let mut builder = ObjectBuilder::new();
        builder.add_map(map);
        assert!(builder.build().is_err(), "map {name} was accepted");
    }
}

#[test]
fn rodata_variables_become_a_data_map_the_program_loads() {
    let mut builder = ObjectBuilder::new();
    builder
        .add_rodata("doc", b"{\"a\":1}\0".to_vec())
        .add_rodata("bpf_metadata_x", b"hi\0".to_vec());
    let mut p = program(
        "p",
        ProgramSection::Xdp,
        &[insn::ld_map(0), insn::mov64_imm(0, 2), insn::exit()],
    );
    p.map_relocs = vec![(0, "bpf_metadata_x".into())];
    builder.add_program(p);
    let bytes = builder.build().unwrap();

    // aya: one `.rodata` map holding both variables, 8-byte aligned.
    let obj = AyaObject::parse(&bytes).unwrap();
    let rodata = &obj.maps[".rodata"];
    assert_eq!(rodata.max_entries(), 1);
    let mut expected = b"{\"a\":1}\0".to_vec();
    expected.extend_from_slice(b"hi\0");
    assert_eq!(rodata.data(), expected.as_slice());

    // The relocation names the variable; its symbol says where it is.
    let file = object::File::parse(&*bytes).unwrap();
    let xdp = file.section_by_name("xdp").unwrap();
    let (_, reloc) = xdp.relocations().next().unwrap();
    let object::RelocationTarget::Symbol(index) = reloc.target() else {
        panic!("relocation against a non-symbol");
    };
    let symbol = file.symbol_by_index(index).unwrap();
    assert_eq!(
        (symbol.name().unwrap(), symbol.address(), symbol.size()),
        ("bpf_metadata_x", 8, 3)
    );

    // A relocation naming neither a map nor a variable is refused, and so
    // is a variable named like a map.
    let mut bad = ObjectBuilder::new();
    let mut p = program("p", ProgramSection::Xdp, &[insn::ld_map(0), insn::exit()]);
    p.map_relocs = vec![(0, "nothing".into())];
    bad.add_program(p);
    assert!(matches!(bad.build(), Err(ObjError::UnknownMap { .. })));
    let mut clash = ObjectBuilder::new();
    clash
        .add_map(MapDef::new(
            "m",
            MapKind::Array,
            BtfType::u32(),
            BtfType::u32(),
            1,
        ))
        .add_rodata("m", vec![1]);
    assert!(matches!(clash.build(), Err(ObjError::DuplicateName { .. })));
}

#[test]
fn data_variables_become_a_map_that_starts_with_their_bytes() {
    let globals = StructType::new("globals")
        .field("total", BtfType::i64())
        .field("limit", BtfType::i64());
    let mut initial = 5i64.to_le_bytes().to_vec();
    initial.extend_from_slice(&(-3i64).to_le_bytes());
    let mut builder = ObjectBuilder::new();
    builder.add_data("globals", globals.into(), initial.clone());
    let mut p = program(
        "p",
        ProgramSection::Xdp,
        &[insn::ld_map(0), insn::mov64_imm(0, 2), insn::exit()],
    );
    p.map_relocs = vec![(0, "globals".into())];
    builder.add_program(p);
    let bytes = builder.build().unwrap();

    // aya: a `.data` map of one element holding the initial values.
    let obj = AyaObject::parse(&bytes).unwrap();
    let data = &obj.maps[".data"];
    assert_eq!(data.max_entries(), 1);
    assert_eq!(data.value_size(), 16);
    assert_eq!(data.data(), initial.as_slice());

    assert!(flowstate_obj::has_section(&bytes, ".data").unwrap());
    let plain = ObjectBuilder::new()
        .add_program(program("p", ProgramSection::Xdp, &[insn::exit()]))
        .build()
        .unwrap();
    assert!(!flowstate_obj::has_section(&plain, ".data").unwrap());
    assert!(flowstate_obj::has_section(b"not elf", ".data").is_err());

    // Initial bytes must match the type's size.
    let mut wrong = ObjectBuilder::new();
    wrong.add_data("g", BtfType::i64(), vec![0; 4]);
    assert!(matches!(wrong.build(), Err(ObjError::InvalidType { .. })));
}
