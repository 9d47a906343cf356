//! What the running kernel can do, found by trying it: each feature is
//! probed by loading a tiny program (the verifier refuses instructions and
//! helpers it does not know), running one (gotol: Debian's 6.1 accepts it
//! and the run shows whether it jumps), creating a map of the type, or
//! attaching. Version numbers are not trusted for this (distributions
//! backport features);
//! the one exception is timed `may_goto`, a JIT detail no load can see,
//! inferred from the version and marked so.
//!
//! [`kernel_features`] probes once per process. Probing needs CAP_BPF (and
//! CAP_NET_ADMIN for the link probes); without them features read
//! [`Presence::Unknown`] with the reason. The link probes really attach, to
//! the loopback of a network namespace made for them on a thread of their
//! own, so nothing outside sees them and everything goes with the
//! namespace.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::sync::OnceLock;

use crate::sys::{self, BpfAttr, ProgLoadAttr, TestRunAttr, BPF_PROG_LOAD, BPF_PROG_TEST_RUN};

// `enum bpf_cmd`, `enum bpf_prog_type`, `enum bpf_map_type`,
// `enum bpf_attach_type` in include/uapi/linux/bpf.h.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_LINK_CREATE: libc::c_long = 28;
const PROG_TYPE_SCHED_CLS: u32 = 3;
const PROG_TYPE_XDP: u32 = 6;
const MAP_TYPE_ARRAY: u32 = 2;
const MAP_TYPE_LRU_HASH: u32 = 9;
const MAP_TYPE_RINGBUF: u32 = 27;
const ATTACH_XDP: u32 = 37;
const ATTACH_TCX_INGRESS: u32 = 46;
const TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
// Helper ids (`enum bpf_func_id`).
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_KTIME_GET_COARSE_NS: i32 = 160;
const HELPER_LOOP: i32 = 181;
/// lo's index in a new network namespace (its first interface).
const LOOPBACK_IFINDEX: u32 = 1;
const XDP_DROP: i32 = 1;
const XDP_PASS: i32 = 2;
const TC_ACT_UNSPEC: i32 = -1;
/// Verifier log kept for a refused probe (its reason is the last line).
const LOG_BYTES: usize = 64 * 1024;

/// Whether the running kernel has a feature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    Present,
    /// The kernel refused the probe; `reason` is what it said.
    Absent {
        reason: String,
    },
    /// The probe could not tell (no permission, unexpected error).
    Unknown {
        error: String,
    },
}

impl Presence {
    pub fn is_present(&self) -> bool {
        matches!(self, Presence::Present)
    }
}

/// The features flowstate's programs, loader and fallbacks care about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    MayGoto,
    TimedMayGoto,
    Gotol,
    SignedDivision,
    CmpxchgStack,
    CmpxchgMapValue,
    BpfLoop,
    KtimeGetCoarseNs,
    RingBuffer,
    LruHash,
    KernelBtf,
    XdpLink,
    Tcx,
    TestRunLiveFrames,
}

impl Feature {
    pub const ALL: [Feature; 14] = [
        Feature::MayGoto,
        Feature::TimedMayGoto,
        Feature::Gotol,
        Feature::SignedDivision,
        Feature::CmpxchgStack,
        Feature::CmpxchgMapValue,
        Feature::BpfLoop,
        Feature::KtimeGetCoarseNs,
        Feature::RingBuffer,
        Feature::LruHash,
        Feature::KernelBtf,
        Feature::XdpLink,
        Feature::Tcx,
        Feature::TestRunLiveFrames,
    ];

    /// A short name, stable for `--json` and scripts.
    pub fn name(self) -> &'static str {
        match self {
            Feature::MayGoto => "may_goto",
            Feature::TimedMayGoto => "timed_may_goto",
            Feature::Gotol => "gotol",
            Feature::SignedDivision => "sdiv_smod",
            Feature::CmpxchgStack => "cmpxchg_stack",
            Feature::CmpxchgMapValue => "cmpxchg_map_value",
            Feature::BpfLoop => "bpf_loop",
            Feature::KtimeGetCoarseNs => "ktime_get_coarse_ns",
            Feature::RingBuffer => "ringbuf_map",
            Feature::LruHash => "lru_hash_map",
            Feature::KernelBtf => "kernel_btf",
            Feature::XdpLink => "xdp_link",
            Feature::Tcx => "tcx",
            Feature::TestRunLiveFrames => "test_run_live_frames",
        }
    }

    /// The mainline release that brought it (x86_64).
    pub fn since(self) -> &'static str {
        match self {
            Feature::MayGoto => "6.9",
            Feature::TimedMayGoto => "6.15",
            Feature::Gotol | Feature::SignedDivision | Feature::Tcx => "6.6",
            Feature::CmpxchgStack | Feature::CmpxchgMapValue => "5.12",
            Feature::BpfLoop => "5.17",
            Feature::KtimeGetCoarseNs => "5.11",
            Feature::RingBuffer => "5.8",
            Feature::LruHash => "4.10",
            Feature::KernelBtf => "5.4",
            Feature::XdpLink => "5.9",
            Feature::TestRunLiveFrames => "5.18",
        }
    }

    /// What it is and what flowstate does with it.
    pub fn description(self) -> &'static str {
        match self {
            Feature::MayGoto => "may_goto loop bound (the per-flow lock loop)",
            Feature::TimedMayGoto => "may_goto bounded by time, not count (inferred from version)",
            Feature::Gotol => "gotol, 32-bit jump offsets (cpu v4)",
            Feature::SignedDivision => "signed division and modulo sdiv/smod (cpu v4)",
            Feature::CmpxchgStack => "BPF_ATOMIC cmpxchg on the stack",
            Feature::CmpxchgMapValue => "BPF_ATOMIC cmpxchg on a map value (the sequence word)",
            Feature::BpfLoop => "bpf_loop helper (a may_goto fallback)",
            Feature::KtimeGetCoarseNs => "bpf_ktime_get_coarse_ns helper",
            Feature::RingBuffer => "ring buffer maps (events)",
            Feature::LruHash => "LRU hash maps",
            Feature::KernelBtf => "kernel BTF at /sys/kernel/btf/vmlinux",
            Feature::XdpLink => "XDP attached through a bpf_link",
            Feature::Tcx => "TCX: TC attached through a bpf_link (else clsact)",
            Feature::TestRunLiveFrames => "BPF_PROG_TEST_RUN with XDP live frames",
        }
    }
}

/// The running kernel's release and what it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelFeatures {
    /// `uname -r`, e.g. `6.1.0-57-cloud-amd64`.
    pub release: String,
    /// `(major, minor)` read from `release`, when it starts with them.
    pub version: Option<(u32, u32)>,
    pub may_goto: Presence,
    pub timed_may_goto: Presence,
    pub gotol: Presence,
    pub signed_division: Presence,
    pub cmpxchg_stack: Presence,
    pub cmpxchg_map_value: Presence,
    pub bpf_loop: Presence,
    pub ktime_get_coarse_ns: Presence,
    pub ring_buffer: Presence,
    pub lru_hash: Presence,
    pub kernel_btf: Presence,
    pub xdp_link: Presence,
    pub tcx: Presence,
    pub test_run_live_frames: Presence,
}

impl KernelFeatures {
    pub fn get(&self, feature: Feature) -> &Presence {
        match feature {
            Feature::MayGoto => &self.may_goto,
            Feature::TimedMayGoto => &self.timed_may_goto,
            Feature::Gotol => &self.gotol,
            Feature::SignedDivision => &self.signed_division,
            Feature::CmpxchgStack => &self.cmpxchg_stack,
            Feature::CmpxchgMapValue => &self.cmpxchg_map_value,
            Feature::BpfLoop => &self.bpf_loop,
            Feature::KtimeGetCoarseNs => &self.ktime_get_coarse_ns,
            Feature::RingBuffer => &self.ring_buffer,
            Feature::LruHash => &self.lru_hash,
            Feature::KernelBtf => &self.kernel_btf,
            Feature::XdpLink => &self.xdp_link,
            Feature::Tcx => &self.tcx,
            Feature::TestRunLiveFrames => &self.test_run_live_frames,
        }
    }

    /// Every feature with its presence, in [`Feature::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Feature, &Presence)> {
        Feature::ALL.into_iter().map(move |f| (f, self.get(f)))
    }

    /// Probes the running kernel now (prefer [`kernel_features`]).
    pub fn probe() -> KernelFeatures {
        let release = kernel_release();
        let version = parse_version(&release);
        let may_goto = probe_program(PROG_TYPE_XDP, &may_goto_program());
        let timed_may_goto = infer_timed_may_goto(&may_goto, version);
        let (xdp_link, tcx, test_run_live_frames) = probe_in_private_netns();
        KernelFeatures {
            may_goto,
            timed_may_goto,
            gotol: probe_by_running(&gotol_program()),
            signed_division: probe_program(PROG_TYPE_XDP, &signed_division_program()),
            cmpxchg_stack: probe_program(PROG_TYPE_XDP, &cmpxchg_stack_program()),
            cmpxchg_map_value: probe_cmpxchg_map_value(),
            bpf_loop: probe_helper(HELPER_LOOP),
            ktime_get_coarse_ns: probe_helper(HELPER_KTIME_GET_COARSE_NS),
            ring_buffer: probe_map(MAP_TYPE_RINGBUF, 0, 0, 4096)
                .map_or_else(|p| p, |_| Presence::Present),
            lru_hash: probe_map(MAP_TYPE_LRU_HASH, 4, 8, 1)
                .map_or_else(|p| p, |_| Presence::Present),
            kernel_btf: if std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
                Presence::Present
            } else {
                Presence::Absent {
                    reason: "/sys/kernel/btf/vmlinux does not exist".into(),
                }
            },
            xdp_link,
            tcx,
            test_run_live_frames,
            release,
            version,
        }
    }
}

/// The running kernel's features, probed on first use in this process.
pub fn kernel_features() -> &'static KernelFeatures {
    static FEATURES: OnceLock<KernelFeatures> = OnceLock::new();
    FEATURES.get_or_init(KernelFeatures::probe)
}

fn kernel_release() -> String {
    // SAFETY: uname fills a zeroed struct of the right type.
    let mut name: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut name) } != 0 {
        return String::from("unknown");
    }
    let bytes: Vec<u8> = name
        .release
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

/// `"6.1.0-57-cloud-amd64"` -> `Some((6, 1))`.
fn parse_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// Timed may_goto changes how the JIT bounds the loop (by time, on x86_64
/// from 6.15); the instruction is the same, so only the version tells.
fn infer_timed_may_goto(may_goto: &Presence, version: Option<(u32, u32)>) -> Presence {
    if !may_goto.is_present() {
        return Presence::Absent {
            reason: "no may_goto".into(),
        };
    }
    match version {
        Some(v) if cfg!(target_arch = "x86_64") && v >= (6, 15) => Presence::Present,
        Some(_) => Presence::Absent {
            reason: "kernel older than 6.15 (x86_64)".into(),
        },
        None => Presence::Unknown {
            error: "kernel version not readable".into(),
        },
    }
}

// --- instructions, encoded by hand (the probes are a few each) ---------

/// One eBPF instruction: opcode, registers, offset, immediate.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | u64::from(dst & 0xf | (src & 0xf) << 4) << 8
        | u64::from(off as u16) << 16
        | u64::from(imm as u32) << 32
}

fn mov_imm(dst: u8, imm: i32) -> u64 {
    insn(0xb7, dst, 0, 0, imm) // BPF_ALU64 | BPF_MOV | BPF_K
}
fn mov_reg(dst: u8, src: u8) -> u64 {
    insn(0xbf, dst, src, 0, 0) // BPF_ALU64 | BPF_MOV | BPF_X
}
fn call(helper: i32) -> u64 {
    insn(0x85, 0, 0, 0, helper)
}
fn exit() -> u64 {
    insn(0x95, 0, 0, 0, 0)
}
/// `BPF_STX | BPF_DW | BPF_ATOMIC` with `BPF_CMPXCHG`: compares r0 with
/// `*(u64 *)(dst + off)` and stores `src` there when equal.
fn cmpxchg(dst: u8, src: u8, off: i16) -> u64 {
    insn(0xdb, dst, src, off, 0xf1)
}
/// A 64-bit immediate load (two slots), `src` saying what the value is
/// (1: a map fd, 4: a subprogram's relative offset).
fn ld_imm64(dst: u8, src: u8, imm: i32) -> [u64; 2] {
    [insn(0x18, dst, src, 0, imm), 0]
}

const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R10: u8 = 10;

fn may_goto_program() -> Vec<u64> {
    // BPF_JMP | BPF_JCOND | BPF_K, src_reg BPF_MAY_GOTO (0); both
    // outcomes reach the exit, so neither path is dead code.
    vec![
        mov_imm(R0, XDP_PASS),
        insn(0xe5, 0, 0, 1, 0),
        mov_imm(R0, XDP_PASS),
        exit(),
    ]
}

fn gotol_program() -> Vec<u64> {
    // BPF_JMP32 | BPF_JA: the offset is in imm. Some kernels without it
    // (Debian's 6.1) accept the instruction and ignore imm, jumping +0:
    // the program returns XDP_PASS only when gotol really jumps.
    vec![
        mov_imm(R0, XDP_PASS),
        insn(0x15, R0, 0, 1, 3), // if r0 == 3 goto +1 (keeps slot 3 reachable)
        insn(0x06, 0, 0, 0, 1),  // gotol +1
        mov_imm(R0, XDP_DROP),
        exit(),
    ]
}

/// Loads `program` and runs it once on a small frame: present when it
/// returns XDP_PASS.
fn probe_by_running(program: &[u64]) -> Presence {
    let prog = match load(PROG_TYPE_XDP, program) {
        Ok(prog) => prog,
        Err(p) => return p,
    };
    let frame = [0u8; 64];
    let mut attr = TestRunAttr {
        prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    match sys::bpf(BPF_PROG_TEST_RUN, &mut attr) {
        Ok(_) if attr.retval == XDP_PASS as u32 => Presence::Present,
        Ok(_) => Presence::Absent {
            reason: "accepted, but the jump did not go where its offset says".into(),
        },
        Err(e) => Presence::Unknown {
            error: format!("test run: {e}"),
        },
    }
}

fn signed_division_program() -> Vec<u64> {
    // BPF_ALU64 | BPF_DIV / BPF_MOD | BPF_K with off = 1: signed.
    vec![
        mov_imm(R0, -7),
        insn(0x37, R0, 0, 1, 3),
        insn(0x97, R0, 0, 1, 3),
        mov_imm(R0, XDP_PASS),
        exit(),
    ]
}

fn cmpxchg_stack_program() -> Vec<u64> {
    vec![
        insn(0x7a, R10, 0, -8, 0), // *(u64 *)(r10 - 8) = 0
        mov_imm(R0, 0),
        mov_imm(R1, 1),
        cmpxchg(R10, R1, -8),
        mov_imm(R0, XDP_PASS),
        exit(),
    ]
}

fn cmpxchg_map_value_program(map_fd: i32) -> Vec<u64> {
    let [lo, hi] = ld_imm64(R1, 1, map_fd);
    vec![
        insn(0x62, R10, 0, -4, 0), // *(u32 *)(r10 - 4) = 0: the key
        lo,
        hi,
        mov_reg(R2, R10),
        insn(0x07, R2, 0, 0, -4), // r2 += -4
        call(HELPER_MAP_LOOKUP_ELEM),
        insn(0x15, R0, 0, 4, 0), // if r0 == 0 goto exit
        mov_reg(R1, R0),
        mov_imm(R0, 0),
        mov_imm(R2, 1),
        cmpxchg(R1, R2, 0),
        mov_imm(R0, XDP_PASS),
        exit(),
    ]
}

fn helper_program(helper: i32) -> Vec<u64> {
    vec![call(helper), mov_imm(R0, XDP_PASS), exit()]
}

// --- syscalls ---------------------------------------------------------

/// `BPF_MAP_CREATE`, up to `map_flags`.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}
// SAFETY: the kernel's layout of this member (include/uapi/linux/bpf.h).
unsafe impl BpfAttr for MapCreateAttr {}

/// `BPF_LINK_CREATE`, the fields common to every link type.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}
// SAFETY: as above.
unsafe impl BpfAttr for LinkCreateAttr {}

/// A permission problem says nothing about the kernel unless we are root;
/// the refusals below, to a well-formed request, mean it lacks the feature.
fn refused(error: io::Error, reason: impl FnOnce() -> String) -> Presence {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match error.raw_os_error() {
        Some(libc::EPERM) if !root => Presence::Unknown {
            error: format!("{error}: probing needs root (CAP_BPF, CAP_NET_ADMIN)"),
        },
        // Refused to root: this kernel (or a policy on it) does not allow
        // it, which for flowstate is the same as not having it.
        Some(libc::EPERM) => Presence::Absent {
            reason: format!("{}: refused although root", reason()),
        },
        Some(libc::EINVAL | libc::EACCES | libc::E2BIG | libc::EOPNOTSUPP | 524) => {
            Presence::Absent { reason: reason() }
        }
        _ => Presence::Unknown {
            error: error.to_string(),
        },
    }
}

fn load(prog_type: u32, program: &[u64]) -> Result<OwnedFd, Presence> {
    let mut log = vec![0u8; LOG_BYTES];
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: c"GPL".as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: *b"flowstate_probe\0",
        ..ProgLoadAttr::default()
    };
    match sys::bpf(BPF_PROG_LOAD, &mut attr) {
        // SAFETY: BPF_PROG_LOAD returned a new fd that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => Err(refused(e, || last_log_line(&log))),
    }
}

/// The verifier's last words: the line that says why it refused.
fn last_log_line(log: &[u8]) -> String {
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    let text = String::from_utf8_lossy(&log[..end]);
    let reason = text
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| {
            !l.is_empty()
                && !l.starts_with("processed ")
                && !l.starts_with("verification time")
                && !l.starts_with("stack depth")
        })
        .unwrap_or("refused by the verifier");
    reason.to_string()
}

/// A helper exists when the verifier's complaint about a bare call to it
/// (no arguments set up) is not that it does not know the function.
fn probe_helper(helper: i32) -> Presence {
    match load(PROG_TYPE_XDP, &helper_program(helper)) {
        Ok(_) => Presence::Present,
        Err(Presence::Absent { reason }) if !is_unknown_function(&reason) => Presence::Present,
        Err(other) => other,
    }
}

fn is_unknown_function(reason: &str) -> bool {
    reason.contains("invalid func") || reason.contains("unknown func")
}

fn probe_program(prog_type: u32, program: &[u64]) -> Presence {
    load(prog_type, program).map_or_else(|p| p, |_| Presence::Present)
}

fn probe_map(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
) -> Result<OwnedFd, Presence> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_flags: 0,
    };
    match sys::bpf(BPF_MAP_CREATE, &mut attr) {
        // SAFETY: BPF_MAP_CREATE returned a new fd that nothing else owns.
        Ok(fd) => Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) }),
        Err(e) => Err(refused(e, || format!("map type {map_type} refused"))),
    }
}

fn probe_cmpxchg_map_value() -> Presence {
    let map = match probe_map(MAP_TYPE_ARRAY, 4, 8, 1) {
        Ok(map) => map,
        Err(p) => {
            return Presence::Unknown {
                error: format!("creating an array map: {p:?}"),
            }
        }
    };
    let fd = std::os::fd::AsRawFd::as_raw_fd(&map);
    probe_program(PROG_TYPE_XDP, &cmpxchg_map_value_program(fd))
}

fn probe_link(prog_type: u32, verdict: i32, attach_type: u32) -> Presence {
    let prog = match load(prog_type, &[mov_imm(R0, verdict), exit()]) {
        Ok(prog) => prog,
        Err(p) => {
            return Presence::Unknown {
                error: format!("loading a bare program: {p:?}"),
            }
        }
    };
    let mut attr = LinkCreateAttr {
        prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
        target_ifindex: LOOPBACK_IFINDEX,
        attach_type,
        flags: 0,
    };
    match sys::bpf(BPF_LINK_CREATE, &mut attr) {
        Ok(fd) => {
            // Closing the link detaches the program.
            // SAFETY: a new fd that nothing else owns.
            drop(unsafe { OwnedFd::from_raw_fd(fd as i32) });
            Presence::Present
        }
        Err(e) => {
            let said = e.to_string();
            refused(e, || {
                format!("BPF_LINK_CREATE with attach type {attach_type}: {said}")
            })
        }
    }
}

fn probe_live_frames() -> Presence {
    // XDP_DROP: a live frame goes nowhere.
    let prog = match load(PROG_TYPE_XDP, &[mov_imm(R0, XDP_DROP), exit()]) {
        Ok(prog) => prog,
        Err(p) => {
            return Presence::Unknown {
                error: format!("loading a bare program: {p:?}"),
            }
        }
    };
    let mut frame = [0u8; 64];
    frame[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    // struct xdp_md: data_end (offset 4) is the frame's length, the frame
    // arrives on lo (ingress_ifindex, offset 12).
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&LOOPBACK_IFINDEX.to_ne_bytes());
    let mut attr = TestRunAttr {
        prog_fd: std::os::fd::AsRawFd::as_raw_fd(&prog) as u32,
        data_size_in: frame.len() as u32,
        data_in: frame.as_ptr() as u64,
        ctx_size_in: ctx.len() as u32,
        ctx_in: ctx.as_ptr() as u64,
        repeat: 1,
        flags: TEST_XDP_LIVE_FRAMES,
        batch_size: 1,
        ..TestRunAttr::default()
    };
    match sys::bpf(BPF_PROG_TEST_RUN, &mut attr) {
        Ok(_) => Presence::Present,
        Err(e) => {
            let said = e.to_string();
            refused(e, || {
                format!("BPF_PROG_TEST_RUN refused the live-frames flag: {said}")
            })
        }
    }
}

/// The link and live-frame probes, run on a thread of their own in a new,
/// empty network namespace: its loopback is theirs to attach to, and
/// whatever they attach goes away with the namespace.
fn probe_in_private_netns() -> (Presence, Presence, Presence) {
    let probes = std::thread::spawn(|| {
        // SAFETY: unshare affects only this thread's namespaces.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            let unknown = Presence::Unknown {
                error: format!("cannot make a network namespace to probe in: {e}"),
            };
            return (unknown.clone(), unknown.clone(), unknown);
        }
        (
            probe_link(PROG_TYPE_XDP, XDP_PASS, ATTACH_XDP),
            probe_link(PROG_TYPE_SCHED_CLS, TC_ACT_UNSPEC, ATTACH_TCX_INGRESS),
            probe_live_frames(),
        )
    });
    probes.join().unwrap_or_else(|_| {
        let unknown = Presence::Unknown {
            error: "the probe thread panicked".into(),
        };
        (unknown.clone(), unknown.clone(), unknown)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_read_from_distribution_releases() {
        assert_eq!(parse_version("6.1.0-57-cloud-amd64"), Some((6, 1)));
        assert_eq!(parse_version("6.12.118+deb12-cloud-amd64"), Some((6, 12)));
        assert_eq!(parse_version("6.18.44-fc-v1300"), Some((6, 18)));
        assert_eq!(parse_version("unknown"), None);
    }

    #[test]
    fn instructions_encode_as_the_kernel_reads_them() {
        // r0 = 2: b7 00 00 00 02 00 00 00 (little-endian bytes).
        assert_eq!(mov_imm(R0, 2).to_le_bytes(), [0xb7, 0, 0, 0, 2, 0, 0, 0]);
        // lock cmpxchg [r10 - 8], r1: db 1a f8 ff f1 00 00 00 (dst in the low nibble).
        assert_eq!(
            cmpxchg(R10, R1, -8).to_le_bytes(),
            [0xdb, 0x1a, 0xf8, 0xff, 0xf1, 0, 0, 0]
        );
    }

    #[test]
    fn every_feature_has_a_distinct_name() {
        let mut names: Vec<_> = Feature::ALL.iter().map(|f| f.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Feature::ALL.len());
    }

    #[test]
    fn timed_may_goto_needs_may_goto() {
        let absent = Presence::Absent {
            reason: String::new(),
        };
        assert!(!infer_timed_may_goto(&absent, Some((6, 18))).is_present());
    }
}
