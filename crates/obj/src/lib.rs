//! flowstate-obj: writes an eBPF ELF object in memory, the kind clang
//! writes for `-target bpf -g`, so that aya, libbpf (`ip`, `tc`, `bpftool`)
//! and the kernel all accept it.
//!
//! Bytes in, bytes out: no syscalls, so everything here is tested without
//! a kernel.
//!
//! What an object holds:
//!
//! - one code section per program type, named `xdp` or `classifier` (the
//!   names aya 0.14, libbpf 1.x, `ip`, `tc` and `bpftool` all accept;
//!   aya 0.14 does not know `tc`), with one global `STT_FUNC` symbol per
//!   program. Programs of one type share that section, as clang does;
//!   `ip`/`tc` pick the first program of a section.
//! - `license` (`GPL`, needed by GPL-only helpers).
//! - `.maps`: one global `STT_OBJECT` symbol per map over a zeroed
//!   definition, described in `.BTF` the way clang describes
//!   `struct { __uint(type, ..); __type(key, K); ... } name SEC(".maps")`:
//!   a `VAR` per map in a `DATASEC` named `.maps`.
//! - `.BTF`: the maps, their key and value types (named, so
//!   `bpftool map dump` shows fields), and a `FUNC` per program typed as
//!   the kernel types the hook's entry, `int NAME(struct xdp_md *ctx)`
//!   (the whole `struct xdp_md`, since an extension's arguments are
//!   matched against its target's by struct name and kind) or
//!   `int NAME(struct __sk_buff *ctx)`.
//! - `.BTF.ext` (module `btf_ext`): func_info for every function (the
//!   program, and each bpf-to-bpf subprogram found in its instructions),
//!   and line_info when the caller gave source lines
//!   ([`ObjectBuilder::add_source_lines`]): `bpftool prog dump xlated
//!   linum` then shows the source. The kernel loads a program as an
//!   extension (into a libxdp dispatcher's slot) only with func_info.
//! - `R_BPF_64_64` relocations (addend 0) at each `ld_imm64` that loads a
//!   map, against that map's symbol; the loader patches in the map fd.
//! - `.rodata` (only when variables are added, [`ObjectBuilder::add_rodata`]):
//!   read-only globals, one global `STT_OBJECT` symbol each, typed
//!   `char[N]` in a `DATASEC` named `.rodata`. A relocation against one
//!   loads its address (libbpf and aya make the section a frozen array map
//!   of one element and use `BPF_PSEUDO_MAP_VALUE`).
//! - `.data` (only when variables are added, [`ObjectBuilder::add_data`]):
//!   writable globals with their initial bytes, each typed by the caller
//!   (a struct, so `bpftool map dump` names its members) in a `DATASEC`
//!   named `.data`. Loaders make the section an array map of one element
//!   that starts as the section's bytes (libbpf names it
//!   `<object>.data`, aya `.data`); relocations load variables' addresses
//!   as for `.rodata`.
//!
//! ```
//! use flowstate_obj::{BtfType, MapDef, MapKind, ObjectBuilder, ProgramDef, ProgramSection};
//!
//! let mut builder = ObjectBuilder::new();
//! builder.add_map(MapDef::new("counts", MapKind::Array, BtfType::u32(), BtfType::u64(), 1));
//! builder.add_program(ProgramDef {
//!     name: "pass".into(),
//!     section: ProgramSection::Xdp,
//!     // r0 = 2 (XDP_PASS); exit
//!     insns: vec![0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0],
//!     map_relocs: vec![],
//! });
//! let elf = builder.build().unwrap();
//! assert_eq!(&elf[..4], b"\x7fELF");
//! ```

mod btf;
mod btf_ext;
mod functions;
mod subprograms;

pub use functions::{xdp_function_btf, FuncInfo, FunctionBtf};

use object::write::{Object, Relocation, StandardSegment, Symbol, SymbolId, SymbolSection};
use object::{
    elf, Architecture, BinaryFormat, Endianness, RelocationFlags, SectionKind, SymbolFlags,
    SymbolKind, SymbolScope,
};

pub use btf::{BtfType, IntType, Member, StructType};

/// Size of one instruction slot; `ld_imm64` takes two.
pub const SLOT_SIZE: usize = 8;

/// Opcode of `ld_imm64` (BPF_LD | BPF_IMM | BPF_DW), the only instruction a
/// map relocation may point at.
const LD_IMM64: u8 = 0x18;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ObjError {
    #[error("invalid name {name:?}: must be a C identifier")]
    InvalidName { name: String },
    #[error("invalid license {license:?}: must be non-empty, without NUL")]
    InvalidLicense { license: String },
    #[error("two {what} are named {name}")]
    DuplicateName { what: &'static str, name: String },
    #[error("invalid type in {context}: {reason}")]
    InvalidType { context: String, reason: String },
    #[error("map {map}: {reason}")]
    InvalidMap { map: String, reason: String },
    #[error("program {program}: {reason}")]
    InvalidProgram { program: String, reason: String },
    #[error("program {program}: relocation at slot {slot} names unknown map {map}")]
    UnknownMap {
        program: String,
        slot: usize,
        map: String,
    },
    #[error("writing the ELF object: {0}")]
    Write(String),
}

/// The kind of an eBPF map. Numbers are `enum bpf_map_type` in
/// `include/uapi/linux/bpf.h`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapKind {
    Hash,
    Array,
    PerCpuHash,
    PerCpuArray,
    LruHash,
    LruPerCpuHash,
    /// Values are ifindexes (`u32`), for `bpf_redirect_map`.
    DevMap,
    DevMapHash,
    /// Values are program fds (`u32`) written by user space, for
    /// `bpf_tail_call`.
    ProgArray,
    /// No key or value; `max_entries` is the buffer size in bytes.
    RingBuf,
}

impl MapKind {
    /// The kernel's `bpf_map_type` number.
    pub fn bpf_map_type(self) -> u32 {
        match self {
            MapKind::Hash => 1,
            MapKind::Array => 2,
            MapKind::PerCpuHash => 5,
            MapKind::PerCpuArray => 6,
            MapKind::LruHash => 9,
            MapKind::LruPerCpuHash => 10,
            MapKind::DevMap => 14,
            MapKind::DevMapHash => 25,
            MapKind::ProgArray => 3,
            MapKind::RingBuf => 27,
        }
    }

    fn has_key_value(self) -> bool {
        self != MapKind::RingBuf
    }

    /// Whether the key and value are described by BTF type (`key`, `value`
    /// members) or only by size (`key_size`, `value_size`). Device and
    /// program maps get sizes only, as in the kernel's own samples,
    /// because the kernel does not take BTF for their values.
    fn btf_key_value(self) -> bool {
        !matches!(
            self,
            MapKind::DevMap | MapKind::DevMapHash | MapKind::ProgArray
        )
    }

    fn is_array(self) -> bool {
        matches!(
            self,
            MapKind::Array | MapKind::PerCpuArray | MapKind::DevMap | MapKind::ProgArray
        )
    }
}

/// A map to define in `.maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapDef {
    pub name: String,
    pub kind: MapKind,
    /// `None` only for [`MapKind::RingBuf`].
    pub key: Option<BtfType>,
    /// `None` only for [`MapKind::RingBuf`].
    pub value: Option<BtfType>,
    pub max_entries: u32,
    /// `map_flags` (e.g. `BPF_F_NO_PREALLOC` = 1); 0 is omitted from BTF.
    pub flags: u32,
}

impl MapDef {
    /// A map with a key and a value (every kind but [`MapKind::RingBuf`]).
    pub fn new(
        name: impl Into<String>,
        kind: MapKind,
        key: BtfType,
        value: BtfType,
        max_entries: u32,
    ) -> MapDef {
        MapDef {
            name: name.into(),
            kind,
            key: Some(key),
            value: Some(value),
            max_entries,
            flags: 0,
        }
    }

    /// A ring buffer of `size_bytes` (a power of two, a multiple of the
    /// 4096-byte page).
    pub fn ring_buf(name: impl Into<String>, size_bytes: u32) -> MapDef {
        MapDef {
            name: name.into(),
            kind: MapKind::RingBuf,
            key: None,
            value: None,
            max_entries: size_bytes,
            flags: 0,
        }
    }

    pub fn with_flags(mut self, flags: u32) -> MapDef {
        self.flags = flags;
        self
    }

    fn validate(&self) -> Result<(), ObjError> {
        check_name(&self.name)?;
        let invalid = |reason: &str| ObjError::InvalidMap {
            map: self.name.clone(),
            reason: reason.to_string(),
        };
        if self.max_entries == 0 {
            return Err(invalid("max_entries must be at least 1"));
        }
        if !self.kind.has_key_value() {
            if self.key.is_some() || self.value.is_some() {
                return Err(invalid("a ring buffer has no key or value"));
            }
            if !self.max_entries.is_power_of_two() || !self.max_entries.is_multiple_of(4096) {
                return Err(invalid(
                    "a ring buffer's size must be a power of two and a multiple of 4096",
                ));
            }
            return Ok(());
        }
        let (Some(key), Some(value)) = (&self.key, &self.value) else {
            return Err(invalid("this kind of map needs a key and a value type"));
        };
        key.validate(&format!("key of map {}", self.name))?;
        value.validate(&format!("value of map {}", self.name))?;
        if key.size() == 0 || value.size() == 0 {
            return Err(invalid("key and value must not be empty"));
        }
        if self.kind.is_array() && key.size() != 4 {
            return Err(invalid("an array's key must be 4 bytes (u32)"));
        }
        if matches!(
            self.kind,
            MapKind::DevMap | MapKind::DevMapHash | MapKind::ProgArray
        ) && value.size() != 4
        {
            return Err(invalid(
                "a device or program map's value must be 4 bytes (an ifindex or a program fd)",
            ));
        }
        Ok(())
    }
}

/// Which hook a program is for; decides its section name and context type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProgramSection {
    /// `BPF_PROG_TYPE_XDP`, section `xdp`, context `struct xdp_md`.
    Xdp,
    /// `BPF_PROG_TYPE_SCHED_CLS` (TC, TCX), section `classifier`, context
    /// `struct __sk_buff`.
    Classifier,
}

impl ProgramSection {
    pub fn section_name(self) -> &'static str {
        match self {
            ProgramSection::Xdp => "xdp",
            ProgramSection::Classifier => "classifier",
        }
    }

    fn context_struct(self) -> &'static str {
        match self {
            ProgramSection::Xdp => "xdp_md",
            ProgramSection::Classifier => "__sk_buff",
        }
    }
}

/// `struct xdp_md` as in include/uapi/linux/bpf.h. A libxdp dispatcher's
/// slot functions take it, and the kernel matches an extension against
/// its target by the pointed-to struct's name, so it must be a struct,
/// not a forward declaration.
fn xdp_md() -> BtfType {
    [
        "data",
        "data_end",
        "data_meta",
        "ingress_ifindex",
        "rx_queue_index",
        "egress_ifindex",
    ]
    .into_iter()
    .fold(StructType::new("xdp_md"), |st, name| {
        st.field(name, BtfType::u32())
    })
    .into()
}

/// One source line behind a stretch of a program's instructions, for
/// line_info: from `slot` on (until the next line's slot), the code is
/// line `line` (1-based) of the file, whose text is `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceLine {
    pub slot: usize,
    pub line: u32,
    pub text: String,
}

/// The source lines of one program (see [`ObjectBuilder::add_source_lines`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct ProgramLines {
    program: String,
    file: String,
    lines: Vec<SourceLine>,
}

/// A read-only global variable in `.rodata`: bytes the object carries for
/// whoever inspects it (see [`ObjectBuilder::add_rodata`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RodataVar {
    pub name: String,
    pub bytes: Vec<u8>,
}

/// A writable global variable in `.data` (see [`ObjectBuilder::add_data`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataVar {
    pub name: String,
    /// Its BTF type; `bytes` has exactly its size.
    pub ty: BtfType,
    /// The initial value.
    pub bytes: Vec<u8>,
}

/// One program: its instructions, encoded, and where it loads maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramDef {
    pub name: String,
    pub section: ProgramSection,
    /// Encoded instructions, 8 bytes per slot (`ld_imm64` takes two).
    pub insns: Vec<u8>,
    /// `(slot index of an ld_imm64, map name)`: the loader puts that map's
    /// fd there. A name of a [`RodataVar`] or a [`DataVar`] instead loads
    /// that variable's address (the `.rodata` or `.data` map's value,
    /// `BPF_PSEUDO_MAP_VALUE`).
    pub map_relocs: Vec<(usize, String)>,
}

impl ProgramDef {
    fn validate(&self, known: &dyn Fn(&str) -> bool) -> Result<(), ObjError> {
        check_name(&self.name)?;
        let invalid = |reason: String| ObjError::InvalidProgram {
            program: self.name.clone(),
            reason,
        };
        if self.insns.is_empty() || !self.insns.len().is_multiple_of(SLOT_SIZE) {
            return Err(invalid(format!(
                "{} instruction bytes: must be a non-zero multiple of 8",
                self.insns.len()
            )));
        }
        let slots = self.insns.len() / SLOT_SIZE;
        for (index, (slot, map)) in self.map_relocs.iter().enumerate() {
            if *slot >= slots - 1 {
                return Err(invalid(format!(
                    "relocation at slot {slot}: an ld_imm64 there would end past the last slot {}",
                    slots - 1
                )));
            }
            let opcode = self.insns[slot * SLOT_SIZE];
            if opcode != LD_IMM64 {
                return Err(invalid(format!(
                    "relocation at slot {slot}: opcode {opcode:#04x} is not ld_imm64 (0x18)"
                )));
            }
            if self.map_relocs[..index].iter().any(|(s, _)| s == slot) {
                return Err(invalid(format!("two relocations at slot {slot}")));
            }
            if !known(map) {
                return Err(ObjError::UnknownMap {
                    program: self.name.clone(),
                    slot: *slot,
                    map: map.clone(),
                });
            }
        }
        Ok(())
    }
}

fn check_name(name: &str) -> Result<(), ObjError> {
    if btf::is_identifier(name) {
        Ok(())
    } else {
        Err(ObjError::InvalidName {
            name: name.to_string(),
        })
    }
}

/// Collects maps and programs, then writes the object with
/// [`ObjectBuilder::build`].
#[derive(Debug, Clone)]
pub struct ObjectBuilder {
    license: String,
    maps: Vec<MapDef>,
    programs: Vec<ProgramDef>,
    source_lines: Vec<ProgramLines>,
    rodata: Vec<RodataVar>,
    data: Vec<DataVar>,
}

impl Default for ObjectBuilder {
    fn default() -> Self {
        ObjectBuilder::new()
    }
}

impl ObjectBuilder {
    /// An empty object with license `GPL`.
    pub fn new() -> ObjectBuilder {
        ObjectBuilder {
            license: "GPL".to_string(),
            maps: Vec::new(),
            programs: Vec::new(),
            source_lines: Vec::new(),
            rodata: Vec::new(),
            data: Vec::new(),
        }
    }

    pub fn license(&mut self, license: impl Into<String>) -> &mut Self {
        self.license = license.into();
        self
    }

    pub fn add_map(&mut self, map: MapDef) -> &mut Self {
        self.maps.push(map);
        self
    }

    pub fn add_program(&mut self, program: ProgramDef) -> &mut Self {
        self.programs.push(program);
        self
    }

    /// Says which lines of `file` the instructions of `program` came from,
    /// for the object's line_info. Each function start gets the line in
    /// force there (the first line for slot 0 when none starts there).
    pub fn add_source_lines(
        &mut self,
        program: &str,
        file: impl Into<String>,
        lines: Vec<SourceLine>,
    ) -> &mut Self {
        self.source_lines.push(ProgramLines {
            program: program.to_string(),
            file: file.into(),
            lines,
        });
        self
    }

    /// Adds a read-only global `name` holding `bytes` to `.rodata`, typed
    /// `char[N]` in BTF (so `bpftool` prints it as a string, and shows
    /// variables named `bpf_metadata_*` in `bpftool prog show`). Loaders
    /// (libbpf, aya) make `.rodata` an array map of one frozen element
    /// holding the section; a program that loads a variable's address
    /// lists that map among its maps, whoever loaded it.
    pub fn add_rodata(&mut self, name: impl Into<String>, bytes: Vec<u8>) -> &mut Self {
        self.rodata.push(RodataVar {
            name: name.into(),
            bytes,
        });
        self
    }

    /// Adds a writable global `name` of type `ty` starting as `bytes` to
    /// `.data`. Loaders (libbpf, aya) make `.data` an array map of one
    /// element initialised with the section's bytes, so a program starts
    /// with its initial values whoever loads it; libbpf also gives the map
    /// the `DATASEC` as its BTF value type, so `bpftool map dump` shows
    /// each variable's members by name.
    pub fn add_data(&mut self, name: impl Into<String>, ty: BtfType, bytes: Vec<u8>) -> &mut Self {
        self.data.push(DataVar {
            name: name.into(),
            ty,
            bytes,
        });
        self
    }

    /// Checks everything, then writes the ELF object.
    pub fn build(&self) -> Result<Vec<u8>, ObjError> {
        self.validate()?;

        let mut obj = Object::new(BinaryFormat::Elf, Architecture::Bpf, Endianness::Little);
        let mut btf = btf::BtfWriter::new();

        // license: a NUL-terminated string, as libbpf and aya read it.
        let license_section = obj.add_section(
            obj.segment_name(StandardSegment::Data).to_vec(),
            b"license".to_vec(),
            SectionKind::Data,
        );
        let mut license = self.license.clone().into_bytes();
        license.push(0);
        let license_len = license.len() as u64;
        obj.set_section_data(license_section, license, 1);
        obj.add_symbol(global_symbol(
            "_license",
            SymbolKind::Data,
            license_section,
            0,
            license_len,
        ));

        let map_symbols = self.write_maps(&mut obj, &mut btf);
        let rodata_symbols = self.write_rodata(&mut obj, &mut btf);
        let data_symbols = self.write_data(&mut obj, &mut btf);
        // Every name a relocation may give, with its symbol.
        let symbols: Vec<(&str, SymbolId)> = (self.maps.iter().map(|m| m.name.as_str()))
            .chain(self.rodata.iter().map(|v| v.name.as_str()))
            .chain(self.data.iter().map(|v| v.name.as_str()))
            .zip(
                map_symbols
                    .into_iter()
                    .chain(rodata_symbols)
                    .chain(data_symbols),
            )
            .collect();
        let ext = self.write_programs(&mut obj, &mut btf, &symbols)?;

        let btf_section = obj.add_section(Vec::new(), b".BTF".to_vec(), SectionKind::Other);
        obj.set_section_data(btf_section, btf.finish(), 4);
        if !ext.is_empty() {
            let ext_section = obj.add_section(Vec::new(), b".BTF.ext".to_vec(), SectionKind::Other);
            obj.set_section_data(ext_section, btf_ext::encode(&ext), 4);
        }

        obj.write().map_err(|e| ObjError::Write(e.to_string()))
    }

    fn validate(&self) -> Result<(), ObjError> {
        if self.license.is_empty() || self.license.contains('\0') {
            return Err(ObjError::InvalidLicense {
                license: self.license.clone(),
            });
        }
        for (index, map) in self.maps.iter().enumerate() {
            map.validate()?;
            if self.maps[..index].iter().any(|m| m.name == map.name) {
                return Err(ObjError::DuplicateName {
                    what: "maps",
                    name: map.name.clone(),
                });
            }
        }
        for lines in &self.source_lines {
            let Some(program) = self.programs.iter().find(|p| p.name == lines.program) else {
                return Err(ObjError::InvalidProgram {
                    program: lines.program.clone(),
                    reason: "source lines given for a program the object does not have".into(),
                });
            };
            let slots = program.insns.len() / SLOT_SIZE;
            if let Some(bad) = lines
                .lines
                .iter()
                .find(|l| l.slot >= slots || l.line == 0 || l.line > btf_ext::MAX_LINE)
            {
                return Err(ObjError::InvalidProgram {
                    program: program.name.clone(),
                    reason: format!(
                        "source line {} at slot {}: the program has {slots} slots and lines \
                         run from 1 to {}",
                        bad.line,
                        bad.slot,
                        btf_ext::MAX_LINE
                    ),
                });
            }
        }
        for (index, var) in self.rodata.iter().enumerate() {
            check_name(&var.name)?;
            if var.bytes.is_empty() {
                return Err(ObjError::InvalidType {
                    context: format!("rodata {}", var.name),
                    reason: "a variable needs at least one byte".to_string(),
                });
            }
            let taken = self.rodata[..index].iter().any(|v| v.name == var.name)
                || self.maps.iter().any(|m| m.name == var.name);
            if taken {
                return Err(ObjError::DuplicateName {
                    what: "maps or rodata variables",
                    name: var.name.clone(),
                });
            }
        }
        for (index, var) in self.data.iter().enumerate() {
            check_name(&var.name)?;
            let context = format!("data {}", var.name);
            var.ty.validate(&context)?;
            if var.bytes.is_empty() || var.bytes.len() != var.ty.size() as usize {
                return Err(ObjError::InvalidType {
                    context,
                    reason: format!(
                        "{} initial bytes for a type of {} (must be equal and non-zero)",
                        var.bytes.len(),
                        var.ty.size()
                    ),
                });
            }
            let taken = self.data[..index].iter().any(|v| v.name == var.name)
                || self.rodata.iter().any(|v| v.name == var.name)
                || self.maps.iter().any(|m| m.name == var.name);
            if taken {
                return Err(ObjError::DuplicateName {
                    what: "maps or global variables",
                    name: var.name.clone(),
                });
            }
        }
        let known = |name: &str| {
            self.maps.iter().any(|m| m.name == name)
                || self.rodata.iter().any(|v| v.name == name)
                || self.data.iter().any(|v| v.name == name)
        };
        for (index, program) in self.programs.iter().enumerate() {
            program.validate(&known)?;
            if self.programs[..index]
                .iter()
                .any(|p| p.name == program.name)
            {
                return Err(ObjError::DuplicateName {
                    what: "programs",
                    name: program.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// Writes `.maps` and its BTF; returns each map's symbol, in order.
    fn write_maps(&self, obj: &mut Object<'_>, btf: &mut btf::BtfWriter) -> Vec<SymbolId> {
        if self.maps.is_empty() {
            return Vec::new();
        }
        let section = obj.add_section(
            obj.segment_name(StandardSegment::Data).to_vec(),
            b".maps".to_vec(),
            SectionKind::Data,
        );
        let int = btf.add_type(&BtfType::int("int", 4, true));
        let mut vars = Vec::with_capacity(self.maps.len());
        let mut symbols = Vec::with_capacity(self.maps.len());
        let mut offset = 0u32;
        for map in &self.maps {
            // `int (*name)[N]`: how clang's __uint(name, N) carries a number.
            let number = |btf: &mut btf::BtfWriter, n: u32| {
                let array = btf.array(int, n);
                btf.ptr(array)
            };
            let mut members = vec![("type", number(btf, map.kind.bpf_map_type()))];
            if let (Some(key), Some(value)) = (&map.key, &map.value) {
                if map.kind.btf_key_value() {
                    let key = btf.add_type(key);
                    let value = btf.add_type(value);
                    members.push(("key", btf.ptr(key)));
                    members.push(("value", btf.ptr(value)));
                } else {
                    members.push(("key_size", number(btf, key.size())));
                    members.push(("value_size", number(btf, value.size())));
                }
            }
            members.push(("max_entries", number(btf, map.max_entries)));
            if map.flags != 0 {
                members.push(("map_flags", number(btf, map.flags)));
            }
            let def = btf.pointer_struct(&members);
            let size = members.len() as u32 * 8;
            let var = btf.var_global(&map.name, def);
            vars.push(btf::SecVar { var, offset, size });
            symbols.push(obj.add_symbol(global_symbol(
                &map.name,
                SymbolKind::Data,
                section,
                u64::from(offset),
                u64::from(size),
            )));
            offset += size;
        }
        obj.set_section_data(section, vec![0u8; offset as usize], 8);
        btf.datasec(".maps", offset, &vars);
        symbols
    }

    /// Writes `.rodata` and its BTF (a `DATASEC` of `char[N]` variables,
    /// each 8-byte aligned); returns each variable's symbol, in order.
    fn write_rodata(&self, obj: &mut Object<'_>, btf: &mut btf::BtfWriter) -> Vec<SymbolId> {
        if self.rodata.is_empty() {
            return Vec::new();
        }
        let char_type = btf.add_type(&BtfType::int("char", 1, true));
        let vars: Vec<_> = self
            .rodata
            .iter()
            .map(|var| {
                let array = btf.array(char_type, var.bytes.len() as u32);
                (var.name.as_str(), var.bytes.as_slice(), array)
            })
            .collect();
        write_variables(obj, btf, ".rodata", SectionKind::ReadOnlyData, &vars)
    }

    /// Writes `.data` and its BTF (a `DATASEC` of the variables, each
    /// 8-byte aligned and typed as given); returns each variable's symbol.
    fn write_data(&self, obj: &mut Object<'_>, btf: &mut btf::BtfWriter) -> Vec<SymbolId> {
        if self.data.is_empty() {
            return Vec::new();
        }
        let vars: Vec<_> = self
            .data
            .iter()
            .map(|var| {
                (
                    var.name.as_str(),
                    var.bytes.as_slice(),
                    btf.add_type(&var.ty),
                )
            })
            .collect();
        write_variables(obj, btf, ".data", SectionKind::Data, &vars)
    }

    fn write_programs(
        &self,
        obj: &mut Object<'_>,
        btf: &mut btf::BtfWriter,
        symbols: &[(&str, SymbolId)],
    ) -> Result<Vec<btf_ext::SectionInfo>, ObjError> {
        let int = btf.add_type(&BtfType::int("int", 4, true));
        let mut ext = Vec::new();
        let mut text = subprograms::Text::default();
        for kind in [ProgramSection::Xdp, ProgramSection::Classifier] {
            let programs: Vec<&ProgramDef> =
                self.programs.iter().filter(|p| p.section == kind).collect();
            if programs.is_empty() {
                continue;
            }
            let section = obj.add_section(
                obj.segment_name(StandardSegment::Text).to_vec(),
                kind.section_name().as_bytes().to_vec(),
                SectionKind::Text,
            );
            let context = match kind {
                ProgramSection::Xdp => btf.add_type(&xdp_md()),
                ProgramSection::Classifier => btf.fwd_struct(kind.context_struct()),
            };
            let context_ptr = btf.ptr(context);
            let proto = btf.func_proto(int, &[("ctx", context_ptr)]);
            // Subprograms' arguments come from their callers; BTF only
            // has to say they are functions.
            let sub_proto = btf.func_proto(int, &[]);
            let mut info = btf_ext::SectionInfo {
                name_off: btf.string(kind.section_name()),
                ..btf_ext::SectionInfo::default()
            };
            for program in programs {
                // Subprograms (callbacks) go to `.text`, as clang puts
                // them: aya and libbpf link only functions found there.
                let (main, moved) = text.take_subprograms(obj, btf, program, sub_proto)?;
                let program = &main;
                let start = obj.append_section_data(section, &program.insns, SLOT_SIZE as u64);
                self.describe_functions(btf, program, start as u32, proto, sub_proto, &mut info);
                // With line_info, the kernel wants a line at every
                // function's start: the program's first line will do.
                if let Some(first) = info.lines.iter().find(|l| l.insn_off == start as u32) {
                    let first = *first;
                    text.lines
                        .extend(moved.starts.iter().map(|&at| btf_ext::LineRecord {
                            insn_off: at as u32,
                            ..first
                        }));
                }
                obj.add_symbol(global_symbol(
                    &program.name,
                    SymbolKind::Text,
                    section,
                    start,
                    program.insns.len() as u64,
                ));
                let map_symbol = |name: &str| {
                    symbols
                        .iter()
                        .find(|(n, _)| *n == name)
                        .map(|(_, symbol)| *symbol)
                };
                text.relocate(obj, section, start, &moved, &map_symbol)?;
                for (slot, map_name) in &program.map_relocs {
                    // validate() checked that every relocation names a map
                    // or a variable.
                    let Some(symbol) = map_symbol(map_name) else {
                        continue;
                    };
                    obj.add_relocation(
                        section,
                        Relocation {
                            offset: start + (slot * SLOT_SIZE) as u64,
                            symbol,
                            addend: 0,
                            flags: RelocationFlags::Elf {
                                r_type: elf::R_BPF_64_64,
                            },
                        },
                    )
                    .map_err(|e| ObjError::Write(e.to_string()))?;
                }
            }
            ext.push(info);
        }
        ext.extend(text.finish(btf));
        Ok(ext)
    }

    /// func_info and line_info records of one program placed at byte
    /// `start` of its section, with the `FUNC` types they name.
    fn describe_functions(
        &self,
        btf: &mut btf::BtfWriter,
        program: &ProgramDef,
        start: u32,
        proto: u32,
        sub_proto: u32,
        info: &mut btf_ext::SectionInfo,
    ) {
        let byte = |slot: usize| start + (slot * SLOT_SIZE) as u32;
        let main = btf.func_global(&program.name, proto);
        info.funcs.push(btf_ext::FuncRecord {
            insn_off: byte(0),
            type_id: main,
        });
        // Subprograms were moved to `.text` (see `subprograms`), which
        // describes them.
        let _ = sub_proto;
        let Some(source) = self.source_lines.iter().find(|l| l.program == program.name) else {
            return;
        };
        let mut lines = source.lines.clone();
        // Lines of subprograms moved to `.text` are not this section's.
        lines.retain(|l| l.slot < program.insns.len() / SLOT_SIZE);
        lines.sort_by_key(|l| l.slot);
        lines.dedup_by_key(|l| l.slot);
        let Some(first) = lines.first().cloned() else {
            return;
        };
        // The kernel wants a line at every function start.
        for slot in [0] {
            if lines.iter().any(|l| l.slot == slot) {
                continue;
            }
            let in_force = lines.iter().rev().find(|l| l.slot < slot).unwrap_or(&first);
            lines.push(SourceLine {
                slot,
                ..in_force.clone()
            });
        }
        let file_name_off = btf.string(&source.file);
        for line in lines {
            info.lines.push(btf_ext::LineRecord {
                insn_off: byte(line.slot),
                file_name_off,
                line_off: btf.string(&line.text),
                line: line.line,
                column: 1,
            });
        }
    }
}

/// Writes a data section `name` holding `vars` (name, initial bytes, BTF
/// type id), each 8-byte aligned, and its `DATASEC`; returns each
/// variable's symbol, in order.
fn write_variables(
    obj: &mut Object<'_>,
    btf: &mut btf::BtfWriter,
    name: &str,
    kind: SectionKind,
    vars: &[(&str, &[u8], u32)],
) -> Vec<SymbolId> {
    let section = obj.add_section(
        obj.segment_name(StandardSegment::Data).to_vec(),
        name.as_bytes().to_vec(),
        kind,
    );
    let mut bytes = Vec::new();
    let mut sec_vars = Vec::with_capacity(vars.len());
    let mut symbols = Vec::with_capacity(vars.len());
    for &(var_name, initial, ty) in vars {
        bytes.resize(bytes.len().next_multiple_of(8), 0);
        let offset = bytes.len() as u32;
        let size = initial.len() as u32;
        bytes.extend_from_slice(initial);
        sec_vars.push(btf::SecVar {
            var: btf.var_global(var_name, ty),
            offset,
            size,
        });
        symbols.push(obj.add_symbol(global_symbol(
            var_name,
            SymbolKind::Data,
            section,
            u64::from(offset),
            u64::from(size),
        )));
    }
    let size = bytes.len() as u32;
    obj.set_section_data(section, bytes, 8);
    btf.datasec(name, size, &sec_vars);
    symbols
}

/// A global symbol with default visibility, as clang emits for programs,
/// maps and `_license`.
fn global_symbol(
    name: &str,
    kind: SymbolKind,
    section: object::write::SectionId,
    value: u64,
    size: u64,
) -> Symbol {
    Symbol {
        name: name.as_bytes().to_vec(),
        value,
        size,
        kind,
        scope: SymbolScope::Dynamic,
        weak: false,
        section: SymbolSection::Section(section),
        flags: SymbolFlags::None,
    }
}

/// A standalone BTF blob (what `BPF_BTF_LOAD` takes) describing `types`,
/// and each one's type id in it: for a map made outside an object whose
/// key and value should still read by name in `bpftool map dump`.
pub fn standalone_btf(types: &[&BtfType]) -> Result<(Vec<u8>, Vec<u32>), ObjError> {
    let mut btf = btf::BtfWriter::new();
    let mut ids = Vec::with_capacity(types.len());
    for (index, ty) in types.iter().enumerate() {
        ty.validate(&format!("standalone BTF type {index}"))?;
        ids.push(btf.add_type(ty));
    }
    Ok((btf.finish(), ids))
}

/// Whether the ELF object `elf` (as [`ObjectBuilder::build`] writes it)
/// has a section named `name`; `Err` if `elf` is not such an object.
pub fn has_section(elf: &[u8], name: &str) -> Result<bool, ObjError> {
    let bad = |what: &str| ObjError::Write(format!("reading the object: {what}"));
    let u16_at = |at: usize| {
        elf.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
    };
    let u32_at = |at: usize| {
        elf.get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let u64_at = |at: usize| {
        elf.get(at..at + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    // A 64-bit little-endian ELF.
    if elf.get(..6) != Some(b"\x7fELF\x02\x01".as_slice()) {
        return Err(bad("not a 64-bit little-endian ELF object"));
    }
    let shoff = u64_at(0x28).ok_or_else(|| bad("truncated header"))? as usize;
    let entsize = u16_at(0x3a).ok_or_else(|| bad("truncated header"))? as usize;
    let count = u16_at(0x3c).ok_or_else(|| bad("truncated header"))? as usize;
    let strndx = u16_at(0x3e).ok_or_else(|| bad("truncated header"))? as usize;
    let header = |index: usize| shoff + index * entsize;
    let names = u64_at(header(strndx) + 0x18).ok_or_else(|| bad("truncated section headers"))?;
    let name_of = |index: usize| -> Option<&[u8]> {
        let start = names as usize + u32_at(header(index))? as usize;
        let rest = elf.get(start..)?;
        Some(&rest[..rest.iter().position(|&b| b == 0)?])
    };
    Ok((0..count).any(|i| name_of(i) == Some(name.as_bytes())))
}
