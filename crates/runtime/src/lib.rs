//! flowstate-runtime: puts objects written by flowstate-obj into the
//! kernel with aya 0.14, runs them with `BPF_PROG_TEST_RUN`, reads and
//! writes their maps as bytes, and attaches them to interfaces (XDP, TC
//! through TCX or clsact), with bpffs pins for links, programs and maps.
//!
//! Syscalls: aya does program loading, test runs, attaching and pinning;
//! the map element calls aya only offers for typed maps are done on the
//! map fd by the `sys` module (one `bpf(2)` entry point).
//!
//! [`Loaded`] is `Send + Sync`: threads can share `&Loaded` and call
//! [`Loaded::test_run`] concurrently (see the two-CPU test).

mod attach;
pub mod chain;
pub mod clsact;
pub mod dispatcher;
mod map;
pub mod netlink;
mod probe;
mod query;
mod raw_program;
mod sys;

use std::io;
use std::path::Path;

use aya::programs::{Program, ProgramError, TestRun, TestRunOptions};
use aya::{Ebpf, EbpfLoader};

pub use attach::{
    ensure_bpffs, kernel_unavailable, tcx_programs, ProgramLink, TcDirection, TcOrder, BPFFS_ROOT,
};
pub use aya::programs::XdpMode;
pub use aya::VerifierLogLevel;
pub use map::{create_pinned_typed_array, Entry, RawMap, UpdateMode};
pub use probe::{kernel_features, Feature, KernelFeatures, Presence};
pub use query::program_loaded;
pub use raw_program::RawProgram;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("parsing or preparing the object: {0}")]
    Object(#[source] Box<aya::EbpfError>),
    /// The verifier refused the program; `log` is its full output.
    #[error("the verifier rejected program {program} ({io}):\n{log}")]
    Verifier {
        program: String,
        io: io::Error,
        log: String,
    },
    #[error("program {program}: {source}")]
    Program {
        program: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error("program {program} is a {kind}; only XDP and TC (sched_cls) programs are supported")]
    UnsupportedProgram { program: String, kind: String },
    #[error("no program named {0} in the object")]
    NoSuchProgram(String),
    #[error("no map named {0} in the object")]
    NoSuchMap(String),
    #[error("map {map}: {source}")]
    Map {
        map: String,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {map}: {call} failed: {io}")]
    MapSyscall {
        map: String,
        call: &'static str,
        io: io::Error,
    },
    #[error("map {map}: {what} is {got} bytes, expected {expected}")]
    WrongSize {
        map: String,
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error("map {map}: index {index} out of range")]
    IndexOutOfRange { map: String, index: u32 },
    #[error("pinning at {path}: {source}")]
    Pin {
        path: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("link: {0}")]
    Link(String),
    /// Instructions handed to [`RawProgram::load_xdp`] that cannot be
    /// loaded as given (a bug in their producer).
    #[error("internal error (a flowstate bug): {0}")]
    BadInstructions(String),
    #[error("{call}: {io}")]
    Syscall { call: &'static str, io: io::Error },
    /// Sharing the XDP hook through the libxdp dispatcher protocol.
    #[error("{0}")]
    Dispatcher(String),
}

impl RuntimeError {
    pub(crate) fn syscall(call: &'static str, io: io::Error) -> RuntimeError {
        RuntimeError::Syscall { call, io }
    }

    fn program(program: &str, source: ProgramError) -> RuntimeError {
        match source {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => RuntimeError::Verifier {
                program: program.to_string(),
                io: io_error,
                log: verifier_log.to_string(),
            },
            source => RuntimeError::Program {
                program: program.to_string(),
                source: Box::new(source),
            },
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// How much the verifier logs when it rejects a program (aya retries
    /// with a log buffer on failure, so a success costs no log).
    pub verifier_log_level: VerifierLogLevel,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            verifier_log_level: VerifierLogLevel::DEBUG | VerifierLogLevel::STATS,
        }
    }
}

/// Program types this crate runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgramKind {
    Xdp,
    /// `BPF_PROG_TYPE_SCHED_CLS`: TC and TCX.
    Tc,
}

/// What the kernel reports about a loaded program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProgramStats {
    /// Instructions the verifier processed (`verified_insns`, the
    /// "processed N insns" of its log).
    pub verified_insns: Option<u32>,
    /// Size of the program after the kernel's rewrites, in bytes.
    pub xlated_bytes: Option<u32>,
    /// Size of the JIT-compiled code, in bytes.
    pub jited_bytes: u32,
}

/// One `BPF_PROG_TEST_RUN` call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunResult {
    /// The program's return value (XDP action or TC verdict).
    pub retval: u32,
    /// The packet as the program left it.
    pub data_out: Vec<u8>,
    /// Mean nanoseconds per repetition, as measured by the kernel.
    pub duration_ns: u32,
}

/// Room for a program to grow the packet in a test run (XDP has 256 bytes
/// of headroom; TC can grow more).
const DATA_OUT_SLACK: usize = 1024;

/// An object in the kernel: its maps created, its programs verified.
/// Dropping it unloads whatever is not pinned or attached through a
/// [`ProgramLink`] still alive.
#[derive(Debug)]
pub struct Loaded {
    ebpf: Ebpf,
}

/// Loads `object` (an ELF object as flowstate-obj writes it): creates the
/// maps, then loads every program. XDP and `classifier` (TC) programs only.
pub fn load(object: &[u8], options: &LoadOptions) -> Result<Loaded, RuntimeError> {
    load_sharing(object, &[], options)
}

/// [`load`], except that each map named in `shared` is opened from its
/// pin at the path (or created and pinned there when nothing is pinned
/// yet): how several objects share one map, e.g. a chain's program array.
pub fn load_sharing(
    object: &[u8],
    shared: &[(&str, &Path)],
    options: &LoadOptions,
) -> Result<Loaded, RuntimeError> {
    let mut loader = EbpfLoader::new();
    loader.verifier_log_level(options.verifier_log_level);
    for (map, path) in shared {
        loader.map_pin_path(map, *path);
    }
    let mut ebpf = loader
        .load(object)
        .map_err(|e| RuntimeError::Object(Box::new(e)))?;
    for (name, program) in ebpf.programs_mut() {
        let loaded = match program {
            Program::Xdp(p) => p.load(),
            Program::SchedClassifier(p) => p.load(),
            other => {
                return Err(RuntimeError::UnsupportedProgram {
                    program: name.to_string(),
                    kind: format!("{:?}", other.prog_type()),
                })
            }
        };
        loaded.map_err(|e| RuntimeError::program(name, e))?;
    }
    Ok(Loaded { ebpf })
}

impl Loaded {
    /// Names of the programs, with their kinds.
    pub fn programs(&self) -> Vec<(String, ProgramKind)> {
        self.ebpf
            .programs()
            .filter_map(|(name, p)| Some((name.to_string(), kind_of(p)?)))
            .collect()
    }

    /// Names of the maps.
    pub fn map_names(&self) -> Vec<String> {
        self.ebpf.maps().map(|(name, _)| name.to_string()).collect()
    }

    fn program(&self, name: &str) -> Result<&Program, RuntimeError> {
        self.ebpf
            .program(name)
            .ok_or_else(|| RuntimeError::NoSuchProgram(name.to_string()))
    }

    pub fn program_kind(&self, name: &str) -> Result<ProgramKind, RuntimeError> {
        let program = self.program(name)?;
        kind_of(program).ok_or_else(|| RuntimeError::UnsupportedProgram {
            program: name.to_string(),
            kind: format!("{:?}", program.prog_type()),
        })
    }

    /// The kernel's id of a loaded program.
    pub fn program_id(&self, program: &str) -> Result<u32, RuntimeError> {
        self.program(program)?
            .info()
            .map(|info| info.id())
            .map_err(|e| RuntimeError::program(program, e))
    }

    /// The fd of a loaded program, for attaching it by hand (e.g. as a
    /// clsact filter's program).
    pub fn program_fd(&self, program: &str) -> Result<std::os::fd::BorrowedFd<'_>, RuntimeError> {
        use std::os::fd::AsFd;
        self.program(program)?
            .fd()
            .map(|fd| fd.as_fd())
            .map_err(|e| RuntimeError::program(program, e))
    }

    /// Verifier and JIT figures for a loaded program.
    pub fn stats(&self, program: &str) -> Result<ProgramStats, RuntimeError> {
        let info = self
            .program(program)?
            .info()
            .map_err(|e| RuntimeError::program(program, e))?;
        Ok(ProgramStats {
            verified_insns: info.verified_instruction_count(),
            xlated_bytes: info.size_translated(),
            jited_bytes: info.size_jitted(),
        })
    }

    /// Runs `program` on `packet` `repeat` times (at least once) with
    /// `BPF_PROG_TEST_RUN`; the result is the last run's.
    pub fn test_run(
        &self,
        program: &str,
        packet: &[u8],
        repeat: u32,
    ) -> Result<TestRunResult, RuntimeError> {
        self.test_run_with_ctx(program, packet, None, repeat)
    }

    /// As [`Loaded::test_run`], with a context to start from: a `struct
    /// xdp_md` (24 bytes; e.g. `ingress_ifindex` at offset 12) or a `struct
    /// __sk_buff` (e.g. `ifindex` at offset 40, `mark` at 8). Without one,
    /// a TC run sees `ifindex` 1 (loopback) and `protocol` from the
    /// Ethernet header; the kernel refuses fields it does not let tests
    /// set, with EINVAL.
    pub fn test_run_with_ctx(
        &self,
        program: &str,
        packet: &[u8],
        ctx_in: Option<&[u8]>,
        repeat: u32,
    ) -> Result<TestRunResult, RuntimeError> {
        let mut data_out = vec![0u8; packet.len() + DATA_OUT_SLACK];
        let opts = TestRunOptions {
            data_in: Some(packet),
            data_out: Some(&mut data_out),
            ctx_in,
            repeat: repeat.max(1),
            ..TestRunOptions::default()
        };
        let result = match self.program(program)? {
            Program::Xdp(p) => p.test_run(opts),
            Program::SchedClassifier(p) => p.test_run(opts),
            other => {
                return Err(RuntimeError::UnsupportedProgram {
                    program: program.to_string(),
                    kind: format!("{:?}", other.prog_type()),
                })
            }
        }
        .map_err(|e| RuntimeError::program(program, e))?;
        data_out.truncate(result.data_size_out as usize);
        Ok(TestRunResult {
            retval: result.return_value,
            data_out,
            duration_ns: u32::try_from(result.duration.as_nanos()).unwrap_or(u32::MAX),
        })
    }

    /// Opens a map by name for byte-level access.
    pub fn map(&self, name: &str) -> Result<RawMap, RuntimeError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| RuntimeError::NoSuchMap(name.to_string()))?;
        RawMap::from_map_data(name, map_data(map))
    }

    /// Pins a map at `path` on bpffs (the parent directory must exist), so
    /// it outlives this process; reopen it with [`RawMap::from_pin`].
    pub fn pin_map(&self, name: &str, path: impl AsRef<Path>) -> Result<(), RuntimeError> {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| RuntimeError::NoSuchMap(name.to_string()))?;
        map.pin(path.as_ref()).map_err(|source| RuntimeError::Pin {
            path: path.as_ref().display().to_string(),
            source,
        })
    }

    /// Pins a program at `path` on bpffs.
    pub fn pin_program(&mut self, name: &str, path: impl AsRef<Path>) -> Result<(), RuntimeError> {
        let program = self
            .ebpf
            .program_mut(name)
            .ok_or_else(|| RuntimeError::NoSuchProgram(name.to_string()))?;
        program
            .pin(path.as_ref())
            .map_err(|source| RuntimeError::Pin {
                path: path.as_ref().display().to_string(),
                source,
            })
    }

    fn program_mut(&mut self, name: &str) -> Result<&mut Program, RuntimeError> {
        self.ebpf
            .program_mut(name)
            .ok_or_else(|| RuntimeError::NoSuchProgram(name.to_string()))
    }
}

fn kind_of(program: &Program) -> Option<ProgramKind> {
    match program {
        Program::Xdp(_) => Some(ProgramKind::Xdp),
        Program::SchedClassifier(_) => Some(ProgramKind::Tc),
        _ => None,
    }
}

/// aya keeps every map kind's `MapData` in its own variant.
fn map_data(map: &aya::maps::Map) -> &aya::maps::MapData {
    use aya::maps::Map as M;
    match map {
        M::Array(d)
        | M::ArrayOfMaps(d)
        | M::BloomFilter(d)
        | M::CgroupArray(d)
        | M::CgroupStorage(d)
        | M::CgrpStorage(d)
        | M::CpuMap(d)
        | M::DevMap(d)
        | M::DevMapHash(d)
        | M::HashMap(d)
        | M::HashOfMaps(d)
        | M::InodeStorage(d)
        | M::LpmTrie(d)
        | M::LruHashMap(d)
        | M::PerCpuArray(d)
        | M::PerCpuCgroupStorage(d)
        | M::PerCpuHashMap(d)
        | M::PerCpuLruHashMap(d)
        | M::PerfEventArray(d)
        | M::ProgramArray(d)
        | M::Queue(d)
        | M::ReusePortSockArray(d)
        | M::RingBuf(d)
        | M::SockHash(d)
        | M::SockMap(d)
        | M::SkStorage(d)
        | M::Stack(d)
        | M::StackTraceMap(d)
        | M::Unsupported(d)
        | M::XskMap(d) => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loaded_and_maps_cross_threads() {
        fn shareable<T: Send + Sync>() {}
        shareable::<Loaded>();
        shareable::<RawMap>();
        shareable::<ProgramLink>();
    }

    #[test]
    fn garbage_object_is_an_object_error() {
        let err = load(b"not an ELF object", &LoadOptions::default()).unwrap_err();
        assert!(matches!(err, RuntimeError::Object(_)), "{err}");
    }
}
