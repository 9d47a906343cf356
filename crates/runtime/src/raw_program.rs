//! Programs loaded from bare instructions against maps already open by
//! fd: what the control plane needs to run the editor (see
//! `flowstate_codegen::editor`) on a running instance's pinned maps.
//! aya loads only ELF objects, and would create (or pin) maps of its own;
//! this loads with `BPF_PROG_LOAD`, the map fds patched into the map
//! loads, and runs with `BPF_PROG_TEST_RUN`. The program is unloaded when
//! the [`RawProgram`] is dropped.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};

use crate::sys::{
    self, BpfAttr, BtfLoadAttr, ProgLoadAttr, TestRunAttr, BPF_PROG_LOAD, BPF_PROG_TEST_RUN,
};
use crate::{RawMap, RuntimeError, TestRunResult};

// `enum bpf_cmd`, `enum bpf_prog_type`.
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_BTF_LOAD: libc::c_long = 18;
/// `struct bpf_func_info`: two `u32`s.
const FUNC_INFO_SIZE: u32 = 8;
const BPF_PROG_TYPE_XDP: u32 = 6;
/// `BPF_LD | BPF_DW | BPF_IMM`, the first slot of a map load.
const LD_IMM64: u8 = 0x18;
/// `log_level` bits: the verifier's walk, and its statistics.
const LOG_LEVEL_WALK: u32 = 1;
const LOG_LEVEL_STATS: u32 = 4;
/// Log buffer for the statistics of a load that succeeds.
const STATS_LOG_BYTES: usize = 4096;
/// Log buffer for the walk of a load that failed.
const FAILURE_LOG_BYTES: usize = 4 << 20;
/// Room for a program to grow the packet in a test run.
const DATA_OUT_SLACK: usize = 256;

/// The `BPF_OBJ_GET` member of `union bpf_attr`, up to `file_flags`.
#[repr(C)]
#[derive(Default)]
struct ObjGetAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

// SAFETY: the kernel's layout of this member (include/uapi/linux/bpf.h).
unsafe impl BpfAttr for ObjGetAttr {}

/// An XDP program loaded from instructions; `Send + Sync`, so threads
/// can share it and test-run it at once.
#[derive(Debug)]
pub struct RawProgram {
    name: String,
    fd: OwnedFd,
    verified_insns: Option<u32>,
}

impl RawProgram {
    /// Loads `insns` (`struct bpf_insn` array) as an XDP program named
    /// `name` (at most 15 bytes are kept). Each `(index, map)` in `maps`
    /// puts `map`'s fd into the map load at instruction `index`. A
    /// verifier refusal comes back with its log.
    pub fn load_xdp(
        name: &str,
        insns: &[u8],
        maps: &[(usize, &RawMap)],
    ) -> Result<RawProgram, RuntimeError> {
        Self::load_xdp_with_btf(name, insns, maps, None)
    }

    /// [`RawProgram::load_xdp`] of a program with subprograms (`bpf_loop`
    /// callbacks): the kernel verifies those only with BTF describing each
    /// function, `functions` (see `flowstate_obj::xdp_function_btf`).
    pub fn load_xdp_with_btf(
        name: &str,
        insns: &[u8],
        maps: &[(usize, &RawMap)],
        functions: Option<&flowstate_obj::FunctionBtf>,
    ) -> Result<RawProgram, RuntimeError> {
        let mut insns = insns.to_vec();
        if !insns.len().is_multiple_of(8) {
            return Err(RuntimeError::BadInstructions(format!(
                "program {name}: {} bytes of instructions is not a multiple of 8",
                insns.len()
            )));
        }
        for &(index, map) in maps {
            let at = 8 * index;
            if insns.get(at) != Some(&LD_IMM64) || at + 16 > insns.len() {
                return Err(RuntimeError::BadInstructions(format!(
                    "program {name}: instruction {index} is not a map load"
                )));
            }
            let fd = map.fd().as_raw_fd();
            insns[at + 4..at + 8].copy_from_slice(&fd.to_le_bytes());
        }
        let mut prog_name = [0u8; 16];
        for (slot, byte) in prog_name.iter_mut().take(15).zip(name.bytes()) {
            // The kernel takes letters, digits, '_' and '.'.
            *slot = if byte.is_ascii_alphanumeric() || byte == b'.' {
                byte
            } else {
                b'_'
            };
        }
        let btf_fd = functions.map(|f| load_btf(name, &f.btf)).transpose()?;
        let func_info: Vec<u32> = functions
            .map(|f| {
                f.func_info
                    .iter()
                    .flat_map(|r| [r.insn, r.type_id])
                    .collect()
            })
            .unwrap_or_default();
        let license = c"GPL";
        let attempt = |log_level: u32, log: &mut Vec<u8>| {
            let mut attr = ProgLoadAttr {
                prog_type: BPF_PROG_TYPE_XDP,
                insn_cnt: (insns.len() / 8) as u32,
                insns: insns.as_ptr() as u64,
                license: license.as_ptr() as u64,
                log_level,
                log_size: log.len() as u32,
                log_buf: log.as_mut_ptr() as u64,
                prog_name,
                prog_btf_fd: btf_fd.as_ref().map_or(0, |fd| fd.as_raw_fd() as u32),
                func_info_rec_size: if btf_fd.is_some() { FUNC_INFO_SIZE } else { 0 },
                func_info: if btf_fd.is_some() {
                    func_info.as_ptr() as u64
                } else {
                    0
                },
                func_info_cnt: (func_info.len() / 2) as u32,
                ..ProgLoadAttr::default()
            };
            sys::bpf(BPF_PROG_LOAD, &mut attr)
        };
        let mut log = vec![0u8; STATS_LOG_BYTES];
        let fd = match attempt(LOG_LEVEL_STATS, &mut log) {
            Ok(fd) => fd,
            Err(_) => {
                let mut log = vec![0u8; FAILURE_LOG_BYTES];
                let io = match attempt(LOG_LEVEL_WALK | LOG_LEVEL_STATS, &mut log) {
                    // Loaded on the second try: keep it after all.
                    Ok(fd) => return Ok(RawProgram::from_fd(name, fd, &log)),
                    Err(io) => io,
                };
                return Err(RuntimeError::Verifier {
                    program: name.to_string(),
                    io,
                    log: log_text(&log),
                });
            }
        };
        Ok(RawProgram::from_fd(name, fd, &log))
    }

    /// Loads program `program` of ELF object `object` (as aya would,
    /// relocating its map loads and calls) as an XDP program with no
    /// expected attach type, each map of the object opened from
    /// `maps` by its name there (a map not given is an error).
    ///
    /// What a program array an extension tail-calls through needs: the
    /// kernel (since a 2025 change, backported to stable series, "bpf:
    /// Enforce expected_attach_type for tailcall compatibility") takes
    /// only programs of the caller's expected attach type in its array,
    /// an extension's is always 0, and aya loads every XDP program with
    /// `BPF_XDP`. Such a program is never attached, only tail-called.
    /// No CO-RE relocation or helper sanitizing is done (flowstate's
    /// objects need none).
    pub fn load_xdp_object(
        object: &[u8],
        program: &str,
        maps: &[(&str, &RawMap)],
    ) -> Result<RawProgram, RuntimeError> {
        let bad = |what: String| RuntimeError::BadInstructions(format!("{program}: {what}"));
        let mut obj = aya_obj::Object::parse(object).map_err(|e| bad(e.to_string()))?;
        // The object's maps with their fds (copies: relocating borrows
        // the object mutably).
        let mut object_maps = Vec::new();
        for (name, map) in &obj.maps {
            let Some((_, raw)) = maps.iter().find(|(m, _)| m == name) else {
                return Err(bad(format!(
                    "no open map given for the object's map {name}"
                )));
            };
            object_maps.push((name.clone(), raw.fd().as_raw_fd(), map.clone()));
        }
        let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
        obj.relocate_maps(
            object_maps.iter().map(|(n, fd, m)| (n.as_str(), *fd, m)),
            &text_sections,
        )
        .map_err(|e| bad(e.to_string()))?;
        obj.relocate_calls(&text_sections)
            .map_err(|e| bad(e.to_string()))?;
        let function = obj
            .programs
            .get(program)
            .map(|p| p.function_key())
            .and_then(|key| obj.functions.get(&key))
            .ok_or_else(|| bad("no such program in the object".to_string()))?;
        let insns: Vec<u8> = function
            .instructions
            .iter()
            .flat_map(|insn| {
                // SAFETY: `bpf_insn` is the kernel's plain 8-byte record.
                unsafe { std::mem::transmute::<aya_obj::generated::bpf_insn, [u8; 8]>(*insn) }
            })
            .collect();
        let functions = flowstate_obj::xdp_function_btf(program, &insns);
        Self::load_xdp_with_btf(program, &insns, &[], functions.as_ref())
    }

    fn from_fd(name: &str, fd: i64, log: &[u8]) -> RawProgram {
        // SAFETY: BPF_PROG_LOAD returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        RawProgram {
            name: name.to_string(),
            fd,
            verified_insns: processed_insns(&log_text(log)),
        }
    }

    /// Opens a program pinned on bpffs (e.g. a running instance's
    /// `prog`), to test-run it.
    pub fn from_pin(path: impl AsRef<std::path::Path>) -> Result<RawProgram, RuntimeError> {
        let path = path.as_ref();
        let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| {
            RuntimeError::BadInstructions(format!("{}: NUL in path", path.display()))
        })?;
        let mut attr = ObjGetAttr {
            pathname: c_path.as_ptr() as u64,
            ..ObjGetAttr::default()
        };
        let fd = sys::bpf(BPF_OBJ_GET, &mut attr)
            .map_err(|io| RuntimeError::syscall("BPF_OBJ_GET", io))?;
        // SAFETY: BPF_OBJ_GET returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(RawProgram {
            name: path.display().to_string(),
            fd,
            verified_insns: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The program's fd (to pin it, or put it in a program array).
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Instructions the verifier processed (its "processed N insns").
    pub fn verified_insns(&self) -> Option<u32> {
        self.verified_insns
    }

    /// Runs the program once on `data` with `BPF_PROG_TEST_RUN`.
    pub fn test_run(&self, data: &[u8]) -> Result<TestRunResult, RuntimeError> {
        self.test_run_repeat(data, 1)
    }

    /// Runs the program `repeat` times (at least once) on `data`; the
    /// result is the last run's.
    pub fn test_run_repeat(&self, data: &[u8], repeat: u32) -> Result<TestRunResult, RuntimeError> {
        let mut data_out = vec![0u8; data.len() + DATA_OUT_SLACK];
        let mut attr = TestRunAttr {
            prog_fd: self.fd.as_fd().as_raw_fd() as u32,
            data_size_in: data.len() as u32,
            data_size_out: data_out.len() as u32,
            data_in: data.as_ptr() as u64,
            data_out: data_out.as_mut_ptr() as u64,
            repeat: repeat.max(1),
            ..TestRunAttr::default()
        };
        sys::bpf(BPF_PROG_TEST_RUN, &mut attr)
            .map_err(|io| RuntimeError::syscall("BPF_PROG_TEST_RUN", io))?;
        data_out.truncate((attr.data_size_out as usize).min(data_out.len()));
        Ok(TestRunResult {
            retval: attr.retval,
            data_out,
            duration_ns: attr.duration,
        })
    }
}

fn log_text(log: &[u8]) -> String {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    String::from_utf8_lossy(&log[..end]).into_owned()
}

/// `N` from the verifier's "processed N insns" line.
fn processed_insns(log: &str) -> Option<u32> {
    let rest = &log[log.find("processed ")? + "processed ".len()..];
    rest.split_whitespace().next()?.parse().ok()
}

/// Loads a `.BTF` blob for the program `name`; the fd is only needed
/// until the program is loaded (the program keeps the BTF).
fn load_btf(name: &str, btf: &[u8]) -> Result<OwnedFd, RuntimeError> {
    let mut log = vec![0u8; FAILURE_LOG_BYTES];
    let mut attr = BtfLoadAttr {
        btf: btf.as_ptr() as u64,
        btf_size: btf.len() as u32,
        btf_log_buf: log.as_mut_ptr() as u64,
        btf_log_size: log.len() as u32,
        btf_log_level: 1,
        ..BtfLoadAttr::default()
    };
    match sys::bpf(BPF_BTF_LOAD, &mut attr) {
        // SAFETY: BPF_BTF_LOAD returned a new fd that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(io) => Err(RuntimeError::Verifier {
            program: format!("{name} (its BTF)"),
            io,
            log: log_text(&log),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attribute_layouts_match_the_kernel() {
        // Offsets of the last members used, from include/uapi/linux/bpf.h.
        // `func_info_cnt` ends at 92; the pad stands for `line_info_rec_size`.
        assert_eq!(std::mem::size_of::<ProgLoadAttr>(), 96);
        assert_eq!(std::mem::size_of::<TestRunAttr>(), 80);
    }

    #[test]
    fn the_processed_count_is_read_from_the_stats() {
        let log = "processed 1234 insns (limit 1000000) max_states_per_insn 1\n";
        assert_eq!(processed_insns(log), Some(1234));
        assert_eq!(processed_insns("nothing here"), None);
    }

    #[test]
    fn raw_programs_cross_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<RawProgram>();
    }
}
