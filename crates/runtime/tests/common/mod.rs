//! Shared by the kernel tests: hand-encoded instructions (flowstate-asm is
//! written in parallel, so these tests do not depend on it), objects built
//! with flowstate-obj, and guards that clean up namespaces and pins.

#![allow(dead_code)] // each test file uses a different part

use std::process::Command;

use flowstate_obj::{
    BtfType, MapDef, MapKind, ObjectBuilder, ProgramDef, ProgramSection, StructType,
};

pub const XDP_ABORTED: u32 = 0;
pub const XDP_DROP: u32 = 1;
pub const XDP_PASS: u32 = 2;
pub const TC_ACT_OK: u32 = 0;
pub const TC_ACT_SHOT: u32 = 2;

/// Returns why kernel tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (CAP_BPF, CAP_NET_ADMIN)".into());
    }
    if let Err(e) = flowstate_runtime::ensure_bpffs(flowstate_runtime::BPFFS_ROOT) {
        return Some(format!("no bpffs: {e}"));
    }
    None
}

/// Prints a SKIP line and returns true when the kernel tests cannot run.
pub fn skip(test: &str) -> bool {
    flowstate_testkit::skip_if(test, skip_reason())
}

pub mod insn {
    pub const R0: u8 = 0;
    pub const R1: u8 = 1;
    pub const R2: u8 = 2;
    pub const R6: u8 = 6;
    pub const R10: u8 = 10;

    pub fn encode(opcode: u8, dst: u8, src: u8, off: i16, imm: i32) -> Vec<u8> {
        let mut slot = vec![opcode, (src << 4) | dst];
        slot.extend_from_slice(&off.to_le_bytes());
        slot.extend_from_slice(&imm.to_le_bytes());
        slot
    }

    pub fn mov_imm(dst: u8, imm: i32) -> Vec<u8> {
        encode(0xb7, dst, 0, 0, imm)
    }

    pub fn mov_reg(dst: u8, src: u8) -> Vec<u8> {
        encode(0xbf, dst, src, 0, 0)
    }

    pub fn add_imm(dst: u8, imm: i32) -> Vec<u8> {
        encode(0x07, dst, 0, 0, imm)
    }

    /// `*(u32 *)(dst + off) = imm`
    pub fn st_w(dst: u8, off: i16, imm: i32) -> Vec<u8> {
        encode(0x62, dst, 0, off, imm)
    }

    /// `dst = *(u32 *)(src + off)`
    pub fn ldx_w(dst: u8, src: u8, off: i16) -> Vec<u8> {
        encode(0x61, dst, src, off, 0)
    }

    /// `if dst == imm goto +off`
    pub fn jeq_imm(dst: u8, imm: i32, off: i16) -> Vec<u8> {
        encode(0x15, dst, 0, off, imm)
    }

    pub fn call(helper: i32) -> Vec<u8> {
        encode(0x85, 0, 0, 0, helper)
    }

    pub fn exit() -> Vec<u8> {
        encode(0x95, 0, 0, 0, 0)
    }

    /// `ld_imm64 dst, <map>`: two slots, filled in by the map relocation.
    pub fn ld_map(dst: u8) -> Vec<u8> {
        let mut both = encode(0x18, dst, 0, 0, 0);
        both.extend_from_slice(&[0; 8]);
        both
    }

    /// `lock *(u64 *)(dst + off) += src` (BPF_ATOMIC | BPF_DW, BPF_ADD).
    pub fn atomic_add_dw(dst: u8, src: u8, off: i16) -> Vec<u8> {
        encode(0xdb, dst, src, off, 0x00)
    }

    /// `r0 = cmpxchg((u64 *)(dst + off), r0, src)` (BPF_CMPXCHG).
    pub fn cmpxchg_dw(dst: u8, src: u8, off: i16) -> Vec<u8> {
        encode(0xdb, dst, src, off, 0xf1)
    }

    pub const MAP_LOOKUP_ELEM: i32 = 1;
    pub const SPIN_LOCK: i32 = 93;
    pub const SPIN_UNLOCK: i32 = 94;

    /// Slot index of the next instruction in `parts` so far.
    pub fn slot_of(parts: &[Vec<u8>]) -> usize {
        parts.iter().map(Vec::len).sum::<usize>() / 8
    }
}

use insn::*;

/// `struct flow_entry { u32 state; u64 packets; }` (packets at offset 8).
pub fn flow_value() -> BtfType {
    StructType::new("flow_entry")
        .field("state", BtfType::u32())
        .field("packets", BtfType::u64())
        .into()
}

pub const FLOW_KEY: u32 = 7;

/// The program of the brief: looks up key 7 in `flows` and atomically adds
/// 1 to its `packets`, then returns the `u32` in `verdict[0]`.
pub fn counting_program(name: &str, section: ProgramSection) -> ProgramDef {
    let mut parts = vec![
        st_w(R10, -4, FLOW_KEY as i32),
        mov_reg(R2, R10),
        add_imm(R2, -4),
    ];
    let flows_slot = slot_of(&parts);
    parts.extend([
        ld_map(R1),
        call(MAP_LOOKUP_ELEM),
        jeq_imm(R0, 0, 2),
        mov_imm(R1, 1),
        atomic_add_dw(R0, R1, 8),
        st_w(R10, -8, 0),
        mov_reg(R2, R10),
        add_imm(R2, -8),
    ]);
    let verdict_slot = slot_of(&parts);
    parts.extend([
        ld_map(R1),
        call(MAP_LOOKUP_ELEM),
        jeq_imm(R0, 0, 2),
        ldx_w(R0, R0, 0),
        exit(),
        mov_imm(R0, 0),
        exit(),
    ]);
    ProgramDef {
        name: name.into(),
        section,
        insns: parts.concat(),
        map_relocs: vec![
            (flows_slot, "flows".into()),
            (verdict_slot, "verdict".into()),
        ],
    }
}

/// The counting program for XDP and for TC, over `flows` and `verdict`.
pub fn counting_object() -> Vec<u8> {
    let mut builder = ObjectBuilder::new();
    builder
        .add_map(MapDef::new(
            "flows",
            MapKind::Hash,
            BtfType::u32(),
            flow_value(),
            128,
        ))
        .add_map(MapDef::new(
            "verdict",
            MapKind::Array,
            BtfType::u32(),
            BtfType::u32(),
            1,
        ))
        .add_program(counting_program("count_xdp", ProgramSection::Xdp))
        .add_program(counting_program("count_tc", ProgramSection::Classifier));
    builder.build().expect("valid object")
}

/// `return CONSTANT`.
pub fn constant_program(name: &str, section: ProgramSection, value: i32) -> ProgramDef {
    ProgramDef {
        name: name.into(),
        section,
        insns: [mov_imm(R0, value), exit()].concat(),
        map_relocs: vec![],
    }
}

/// A 60-byte Ethernet + IPv4 + UDP frame.
pub fn udp_packet() -> Vec<u8> {
    let mut p = vec![0u8; 60];
    p[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    p[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 2]);
    p[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    p[14] = 0x45;
    p[16..18].copy_from_slice(&46u16.to_be_bytes());
    p[22] = 64;
    p[23] = 17;
    p[26..30].copy_from_slice(&[10, 0, 0, 1]);
    p[30..34].copy_from_slice(&[10, 0, 0, 2]);
    p[34..36].copy_from_slice(&1111u16.to_be_bytes());
    p[36..38].copy_from_slice(&2222u16.to_be_bytes());
    p[38..40].copy_from_slice(&26u16.to_be_bytes());
    p
}

/// Runs a command, returning its stdout, or its stderr as the error.
pub fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr),
            String::from_utf8_lossy(&output.stdout)
        ))
    }
}

/// A network namespace with a veth pair `veth0`/`veth1` inside, both up;
/// deleted (with its interfaces) on drop, also when a test fails.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = format!("fs-{tag}-{}", std::process::id());
        // A leftover from a crashed run would make `add` fail.
        let _ = run("ip", &["netns", "del", &name]);
        run("ip", &["netns", "add", &name]).expect("ip netns add");
        let netns = Netns { name };
        // No IPv6: the stack's own router solicitations and DAD probes
        // would reach the programs and spoil the packet counts.
        for key in ["all", "default"] {
            netns
                .exec(
                    "sysctl",
                    &["-q", "-w", &format!("net.ipv6.conf.{key}.disable_ipv6=1")],
                )
                .expect("disable IPv6");
        }
        netns
            .exec(
                "ip",
                &[
                    "link", "add", "veth0", "type", "veth", "peer", "name", "veth1",
                ],
            )
            .expect("veth pair");
        netns
            .exec("ip", &["link", "set", "veth0", "up"])
            .expect("veth0 up");
        netns
            .exec("ip", &["link", "set", "veth1", "up"])
            .expect("veth1 up");
        netns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String, String> {
        let mut full = vec!["netns", "exec", &self.name, program];
        full.extend_from_slice(args);
        run("ip", &full)
    }

    /// Runs `f` on a thread that has entered the namespace, so aya's
    /// ifindex lookups and netlink sockets see its interfaces.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    let file = std::fs::File::open(&path).expect("netns file");
                    use std::os::fd::AsRawFd;
                    // SAFETY: a valid netns fd; this thread alone changes.
                    let ret = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                    assert_eq!(ret, 0, "setns: {}", std::io::Error::last_os_error());
                    f()
                })
                .join()
                .expect("netns thread panicked")
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.name]);
    }
}

/// A directory on bpffs, removed with everything pinned in it on drop.
pub struct PinDir {
    pub path: std::path::PathBuf,
}

impl PinDir {
    pub fn new(tag: &str) -> PinDir {
        let path = std::path::Path::new(flowstate_runtime::BPFFS_ROOT)
            .join(format!("flowstate-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).expect("pin dir");
        PinDir { path }
    }

    pub fn join(&self, name: &str) -> std::path::PathBuf {
        self.path.join(name)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Sends `count` copies of `frame` out of `interface` with an AF_PACKET
/// socket (in the calling thread's namespace).
pub fn send_frames(interface: &str, frame: &[u8], count: usize) {
    let name = std::ffi::CString::new(interface).unwrap();
    // SAFETY: plain socket calls on a fresh fd, closed below; the address
    // and buffer outlive the calls.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr());
        assert_ne!(ifindex, 0, "no interface {interface}");
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut addr: libc::sockaddr_ll = std::mem::zeroed();
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&frame[..6]);
        for _ in 0..count {
            let sent = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(
                sent,
                frame.len() as isize,
                "sendto: {}",
                std::io::Error::last_os_error()
            );
        }
        libc::close(fd);
    }
}
