//! Sharing an interface's XDP hook with other programs through the libxdp
//! multi-program dispatcher protocol (xdp-tools `lib/libxdp/protocol.org`,
//! version 2), so that `xdp-loader`, bpfman and flowstate stack programs
//! on one interface and each sees the others'.
//!
//! The protocol, as done here:
//! - A dispatcher (an XDP program named `xdp_dispatcher`, see `object`)
//!   runs on the interface, attached through netlink; each component
//!   program is an extension (`BPF_PROG_TYPE_EXT`) linked in place of one
//!   of its slot functions `prog0`..`prog9`, in run-priority order.
//! - Its configuration map says each slot's run priority and which
//!   verdicts go on to the next slot (chain-call actions).
//! - Pins under `/sys/fs/bpf/xdp/dispatch-IFINDEX-DISPATCHERID/`
//!   (`$LIBXDP_BPFFS/xdp/...` when set): `prog<i>-prog` and `prog<i>-link`,
//!   written under an exclusive `flock` of the `xdp` directory.
//! - Any change builds a whole new dispatcher (components re-linked into
//!   it: kernel 5.10+), pins it, swaps it in with `XDP_FLAGS_REPLACE`
//!   against the old one, then unpins the old one. A failed swap leaves
//!   the old dispatcher running untouched.
//!
//! Crash safety follows from that order: until the swap the interface
//! runs the old dispatcher with all its pins; after it, the new one is
//! fully pinned. A crash between the swap and the old directory's removal
//! leaves a stale directory, which nothing reads (its dispatcher id is no
//! longer attached) and [`remove_stale_dirs`] deletes.

mod object;

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use aya::programs::{Program, ProgramFd, ProgramInfo};
use aya::EbpfLoader;

pub use object::{DISPATCHER_NAME, MAX_SLOTS};

use crate::netlink::{self, XdpAttached};
use crate::{sys, RuntimeError};

/// libxdp's run priority when a program does not say.
pub const DEFAULT_PRIORITY: u32 = 50;
/// `XDP_PASS` as a chain-call action bit: libxdp's default.
pub const CHAIN_ON_PASS: u32 = 1 << 2;
/// `XDP_FLAGS_DRV_MODE` / `XDP_FLAGS_SKB_MODE`, for a new dispatcher.
pub use netlink::{XDP_FLAGS_DRV_MODE, XDP_FLAGS_SKB_MODE};

/// One program in a dispatcher slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Component {
    pub prog_id: u32,
    pub name: String,
    pub priority: u32,
    /// Verdict bits that go on to the next slot (bit 2: `XDP_PASS`).
    pub chain_call_actions: u32,
    /// `BPF_F_XDP_HAS_FRAGS` if the program handles multi-buffer packets.
    pub flags: u32,
}

/// What runs at an interface's XDP hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdpOccupant {
    Free,
    /// A libxdp-protocol dispatcher and its components, in run order.
    Dispatcher {
        prog_id: u32,
        mode_flags: u32,
        components: Vec<Component>,
    },
    /// A program attached alone (not through a dispatcher).
    Program {
        prog_id: u32,
        name: String,
        mode_flags: u32,
    },
}

/// A program to add to a dispatcher: loaded by the caller as an
/// extension of the new dispatcher's slot `slot_function` (its target
/// must be given at load time), through `load`.
pub struct NewComponent<'a> {
    pub name: String,
    pub priority: u32,
    pub chain_call_actions: u32,
    /// Loads the program as an extension replacing `slot_function` of
    /// `dispatcher`; returns its fd.
    #[allow(clippy::type_complexity)]
    pub load: Box<dyn FnOnce(&ProgramFd, &str) -> Result<OwnedFd, RuntimeError> + 'a>,
}

/// Where the new dispatcher runs a joined program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Joined {
    pub dispatcher_id: u32,
    pub slot: usize,
    pub prog_id: u32,
}

fn error(message: impl Into<String>) -> RuntimeError {
    RuntimeError::Dispatcher(message.into())
}

/// libxdp's pin directory: `$LIBXDP_BPFFS/xdp`, else `/sys/fs/bpf/xdp`.
pub fn pin_base() -> PathBuf {
    let root = std::env::var_os("LIBXDP_BPFFS")
        .map_or_else(|| PathBuf::from(crate::BPFFS_ROOT), PathBuf::from);
    root.join("xdp")
}

fn dispatcher_dir(ifindex: u32, dispatcher_id: u32) -> PathBuf {
    pin_base().join(format!("dispatch-{ifindex}-{dispatcher_id}"))
}

/// The protocol's lock: `flock(LOCK_EX)` on the pin directory, released
/// when dropped.
struct ProtocolLock {
    _dir: File,
}

impl ProtocolLock {
    fn acquire() -> Result<ProtocolLock, RuntimeError> {
        let base = pin_base();
        std::fs::create_dir_all(&base)
            .map_err(|e| error(format!("creating {}: {e}", base.display())))?;
        let dir =
            File::open(&base).map_err(|e| error(format!("opening {}: {e}", base.display())))?;
        // SAFETY: flock on a live fd.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(error(format!(
                "locking {}: {}",
                base.display(),
                std::io::Error::last_os_error()
            )));
        }
        Ok(ProtocolLock { _dir: dir })
    }
}

/// What runs on `ifindex` at XDP, read as libxdp reads it.
pub fn xdp_occupant(ifindex: u32) -> Result<XdpOccupant, RuntimeError> {
    // A free hook needs no lock (nor libxdp's directory, which the lock
    // would create).
    let attached = netlink::xdp_attached(ifindex)
        .map_err(|e| error(format!("reading the XDP program of ifindex {ifindex}: {e}")))?;
    if attached.is_none() {
        return Ok(XdpOccupant::Free);
    }
    let _lock = ProtocolLock::acquire()?;
    occupant_locked(ifindex).map(|(occupant, _)| occupant)
}

/// For a dispatcher: its program's fd, and its components' (slot order).
type DispatcherFds = Option<(OwnedFd, Vec<OwnedFd>)>;

/// The occupant, and for a dispatcher the fds of its program and of its
/// components' programs.
fn occupant_locked(ifindex: u32) -> Result<(XdpOccupant, DispatcherFds), RuntimeError> {
    let attached = netlink::xdp_attached(ifindex)
        .map_err(|e| error(format!("reading the XDP program of ifindex {ifindex}: {e}")))?;
    let Some(XdpAttached {
        prog_id,
        mode_flags,
    }) = attached
    else {
        return Ok((XdpOccupant::Free, None));
    };
    let prog_fd = sys::prog_fd_by_id(prog_id)
        .map_err(|e| error(format!("opening XDP program {prog_id}: {e}")))?;
    let info = program_info(prog_id)?;
    let name = info.name_as_str().unwrap_or("").to_string();
    let plain = XdpOccupant::Program {
        prog_id,
        name: name.clone(),
        mode_flags,
    };
    let Some(config) = dispatcher_config(&info)? else {
        return Ok((plain, None));
    };
    let dir = dispatcher_dir(ifindex, prog_id);
    let mut components = Vec::new();
    let mut fds = Vec::new();
    for slot in 0..usize::from(config[2]) {
        let pin = dir.join(format!("prog{slot}-prog"));
        let fd = sys::obj_get(&pin).map_err(|e| {
            error(format!(
                "dispatcher {prog_id} on ifindex {ifindex} has no readable {} ({e}); its pins are \
                 incomplete: remove them with `xdp-loader unload --all` on the interface",
                pin.display()
            ))
        })?;
        let info = ProgramInfo::from_pin(&pin)
            .map_err(|e| error(format!("reading {}: {e}", pin.display())))?;
        let word = |at: usize| u32::from_le_bytes(config[at..at + 4].try_into().unwrap());
        components.push(Component {
            prog_id: info.id(),
            name: info.name_as_str().unwrap_or("").to_string(),
            chain_call_actions: word(4 + 4 * slot) & !(1 << object::DISPATCHER_RETVAL),
            priority: word(4 + 4 * (MAX_SLOTS + slot)),
            flags: word(4 + 4 * (2 * MAX_SLOTS + slot)),
        });
        fds.push(fd);
    }
    Ok((
        XdpOccupant::Dispatcher {
            prog_id,
            mode_flags,
            components,
        },
        Some((prog_fd, fds)),
    ))
}

fn program_info(prog_id: u32) -> Result<ProgramInfo, RuntimeError> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
        .ok_or_else(|| error(format!("program {prog_id} vanished while being read")))
}

/// The configuration bytes if `info` is a version-2 dispatcher (libxdp's
/// test: its name, one map, key u32, one read-only entry, the magic).
fn dispatcher_config(info: &ProgramInfo) -> Result<Option<Vec<u8>>, RuntimeError> {
    if info.name_as_str() != Some(DISPATCHER_NAME) {
        return Ok(None);
    }
    let map_ids = info
        .map_ids()
        .map_err(|e| error(format!("reading the dispatcher's maps: {e}")))?
        .unwrap_or_default();
    let [map_id] = map_ids[..] else {
        return Ok(None);
    };
    let map = aya::maps::MapData::from_id(map_id)
        .map_err(|e| error(format!("opening the dispatcher's map: {e}")))?;
    let raw = crate::RawMap::from_map_data("dispatcher config", &map)?;
    if raw.key_size() != 4 || raw.max_entries() != 1 {
        return Ok(None);
    }
    let Some(value) = raw.lookup(&0u32.to_ne_bytes())? else {
        return Ok(None);
    };
    if value.len() < object::CONFIG_SIZE || value[0] != object::DISPATCHER_MAGIC {
        return Ok(None);
    }
    if value[1] != object::DISPATCHER_VERSION {
        return Err(error(format!(
            "the interface runs an XDP dispatcher of protocol version {}; flowstate speaks \
             version {}: unload its programs with that version's xdp-loader first",
            value[1],
            object::DISPATCHER_VERSION
        )));
    }
    Ok(Some(value))
}

/// A slot of the dispatcher being built: a program already loaded, or
/// the one the caller loads against it.
enum Slot<'a> {
    Existing(Component, OwnedFd),
    New(NewComponent<'a>),
}

impl Slot<'_> {
    fn priority(&self) -> u32 {
        match self {
            Slot::Existing(c, _) => c.priority,
            Slot::New(n) => n.priority,
        }
    }
}

/// Adds a program to the interface's dispatcher (making one when the hook
/// is free), through `new.load`. `mode_flags` is the XDP mode of a new
/// dispatcher; a running one keeps its own. Refuses a hook held by a
/// program outside a dispatcher.
pub fn join(ifindex: u32, new: NewComponent<'_>, mode_flags: u32) -> Result<Joined, RuntimeError> {
    let _lock = ProtocolLock::acquire()?;
    let (occupant, fds) = occupant_locked(ifindex)?;
    let (old, mut slots, mode_flags) = match (occupant, fds) {
        (XdpOccupant::Free, _) => (None, Vec::new(), mode_flags),
        (
            XdpOccupant::Dispatcher {
                prog_id,
                mode_flags,
                components,
            },
            Some((fd, fds)),
        ) => {
            let slots: Vec<Slot> = components
                .into_iter()
                .zip(fds)
                .map(|(c, fd)| Slot::Existing(c, fd))
                .collect();
            (Some((prog_id, fd)), slots, mode_flags)
        }
        (XdpOccupant::Program { prog_id, name, .. }, _) => {
            return Err(refuse_plain(ifindex, prog_id, &name));
        }
        (XdpOccupant::Dispatcher { prog_id, .. }, None) => {
            return Err(refuse_plain(ifindex, prog_id, DISPATCHER_NAME));
        }
    };
    if slots.len() >= MAX_SLOTS {
        return Err(error(format!(
            "the dispatcher on ifindex {ifindex} has all {MAX_SLOTS} slots taken"
        )));
    }
    // After every program of the same or a lower priority: the run order
    // of programs already there does not change.
    let at = slots
        .iter()
        .position(|s| s.priority() > new.priority)
        .unwrap_or(slots.len());
    slots.insert(at, Slot::New(new));
    let (dispatcher_id, ids) = rebuild(ifindex, old, slots, mode_flags)?;
    Ok(Joined {
        dispatcher_id,
        slot: at,
        prog_id: ids[at],
    })
}

fn refuse_plain(ifindex: u32, prog_id: u32, name: &str) -> RuntimeError {
    error(format!(
        "ifindex {ifindex} already runs XDP program {name} (id {prog_id}) on its own, not \
         through a libxdp dispatcher; to share the hook, unload it and load it again with \
         `xdp-loader load DEV OBJECT` (which puts it in a dispatcher), then run flowstate \
         with --xdp-share shared"
    ))
}

/// Takes program `prog_id` out of the interface's dispatcher: a new
/// dispatcher runs the others, or, when it was the last, the hook is
/// left empty. `Ok(false)` when the program is not there.
pub fn leave(ifindex: u32, prog_id: u32) -> Result<bool, RuntimeError> {
    let _lock = ProtocolLock::acquire()?;
    let (occupant, fds) = occupant_locked(ifindex)?;
    let (
        XdpOccupant::Dispatcher {
            prog_id: dispatcher_id,
            mode_flags,
            components,
        },
        Some((fd, fds)),
    ) = (occupant, fds)
    else {
        return Ok(false);
    };
    if !components.iter().any(|c| c.prog_id == prog_id) {
        return Ok(false);
    }
    let slots: Vec<Slot> = components
        .into_iter()
        .zip(fds)
        .filter(|(c, _)| c.prog_id != prog_id)
        .map(|(c, fd)| Slot::Existing(c, fd))
        .collect();
    if slots.is_empty() {
        netlink::xdp_set(ifindex, -1, Some(fd.as_raw_fd()), mode_flags).map_err(|e| {
            error(format!(
                "detaching the dispatcher from ifindex {ifindex}: {e} (another tool changed \
                 the hook meanwhile: try again)"
            ))
        })?;
        remove_dir(&dispatcher_dir(ifindex, dispatcher_id));
        return Ok(true);
    }
    rebuild(ifindex, Some((dispatcher_id, fd)), slots, mode_flags)?;
    Ok(true)
}

/// Swaps program `prog_id` for a new one in the same run position (a
/// reload): one dispatcher swap, so every packet meets either the old
/// program or the new.
pub fn replace(
    ifindex: u32,
    prog_id: u32,
    mut new: NewComponent<'_>,
) -> Result<Joined, RuntimeError> {
    let _lock = ProtocolLock::acquire()?;
    let running = Running::read(ifindex)?;
    let Some(at) = running.components.iter().position(|c| c.prog_id == prog_id) else {
        return Err(error(format!(
            "program {prog_id} is not in the dispatcher on ifindex {ifindex}"
        )));
    };
    new.priority = running.components[at].priority;
    new.chain_call_actions = running.components[at].chain_call_actions;
    let (old, mut slots, mode_flags) = running.into_slots();
    slots[at] = Slot::New(new);
    let (dispatcher_id, ids) = rebuild(ifindex, Some(old), slots, mode_flags)?;
    Ok(Joined {
        dispatcher_id,
        slot: at,
        prog_id: ids[at],
    })
}

/// Where program `prog_id` runs: the interface's running dispatcher (to
/// load a replacement extension against, as the kernel wants a target at
/// load time) and the slot function it replaces. An extension loaded
/// against it can later be linked into any dispatcher's slot
/// ([`swap_in`]): every slot function has the same prototype.
pub fn slot_target(ifindex: u32, prog_id: u32) -> Result<(ProgramFd, String), RuntimeError> {
    let _lock = ProtocolLock::acquire()?;
    let (occupant, _) = occupant_locked(ifindex)?;
    let XdpOccupant::Dispatcher {
        prog_id: dispatcher_id,
        components,
        ..
    } = occupant
    else {
        return Err(error(format!(
            "ifindex {ifindex} runs no dispatcher: program {prog_id} is not running there"
        )));
    };
    let Some(at) = components.iter().position(|c| c.prog_id == prog_id) else {
        return Err(error(format!(
            "program {prog_id} is not in the dispatcher on ifindex {ifindex}"
        )));
    };
    let fd = program_info(dispatcher_id)?
        .fd()
        .map_err(|e| error(format!("opening dispatcher {dispatcher_id}: {e}")))?;
    Ok((fd, object::slot_function(at)))
}

/// Puts the extension `prog`, already loaded (see [`slot_target`]), in
/// the slot of whichever program of `current` runs in the interface's
/// dispatcher, with that slot's priority and chain-call actions: one
/// dispatcher swap, the other programs re-linked as they were. When `prog`
/// already runs there nothing changes (a repair may ask twice).
pub fn swap_in(ifindex: u32, current: &[u32], prog: OwnedFd) -> Result<Joined, RuntimeError> {
    let _lock = ProtocolLock::acquire()?;
    let new_id = prog_id_of(prog.as_fd())?;
    let running = Running::read(ifindex)?;
    let position = |f: &dyn Fn(u32) -> bool| running.components.iter().position(|c| f(c.prog_id));
    if let Some(slot) = position(&|id| id == new_id) {
        return Ok(Joined {
            dispatcher_id: running.id,
            slot,
            prog_id: new_id,
        });
    }
    let Some(at) = position(&|id| current.contains(&id)) else {
        return Err(error(format!(
            "none of programs {current:?} is in the dispatcher on ifindex {ifindex}"
        )));
    };
    let component = Component {
        prog_id: new_id,
        ..running.components[at].clone()
    };
    let (old, mut slots, mode_flags) = running.into_slots();
    slots[at] = Slot::Existing(component, prog);
    let (dispatcher_id, _) = rebuild(ifindex, Some(old), slots, mode_flags)?;
    Ok(Joined {
        dispatcher_id,
        slot: at,
        prog_id: new_id,
    })
}

/// The dispatcher running on an interface, with fds of its program and of
/// its components' (slot order): what a swap within it starts from.
struct Running {
    id: u32,
    mode_flags: u32,
    components: Vec<Component>,
    fd: OwnedFd,
    fds: Vec<OwnedFd>,
}

impl Running {
    /// The interface's dispatcher, for replacing a program in it (the
    /// caller holds the lock).
    fn read(ifindex: u32) -> Result<Running, RuntimeError> {
        match occupant_locked(ifindex)? {
            (
                XdpOccupant::Dispatcher {
                    prog_id,
                    mode_flags,
                    components,
                },
                Some((fd, fds)),
            ) => Ok(Running {
                id: prog_id,
                mode_flags,
                components,
                fd,
                fds,
            }),
            _ => Err(error(format!(
                "ifindex {ifindex} runs no dispatcher: the program to replace is gone"
            ))),
        }
    }

    /// What [`rebuild`] takes: the old dispatcher, every slot as it is,
    /// and the XDP mode.
    fn into_slots<'a>(self) -> ((u32, OwnedFd), Vec<Slot<'a>>, u32) {
        let slots = self
            .components
            .into_iter()
            .zip(self.fds)
            .map(|(c, fd)| Slot::Existing(c, fd))
            .collect();
        ((self.id, self.fd), slots, self.mode_flags)
    }
}

/// Builds, pins and swaps in a dispatcher running `slots` in order;
/// returns its id and the slots' program ids. The old dispatcher keeps
/// running if anything fails.
fn rebuild(
    ifindex: u32,
    old: Option<(u32, OwnedFd)>,
    slots: Vec<Slot<'_>>,
    mode_flags: u32,
) -> Result<(u32, Vec<u32>), RuntimeError> {
    let mut ebpf = EbpfLoader::new()
        .load(&object::dispatcher_object())
        .map_err(|e| RuntimeError::Object(Box::new(e)))?;
    let mut config = Vec::with_capacity(slots.len());
    for slot in &slots {
        config.push(match slot {
            Slot::Existing(c, _) => (c.chain_call_actions, c.priority, c.flags),
            Slot::New(n) => (n.chain_call_actions, n.priority, 0),
        });
    }
    {
        let map = ebpf
            .map(object::CONFIG_MAP)
            .ok_or_else(|| RuntimeError::NoSuchMap(object::CONFIG_MAP.into()))?;
        let raw = crate::RawMap::from_map_data(object::CONFIG_MAP, crate::map_data(map))?;
        raw.array_set(0, &object::config_bytes(&config, false))?;
    }
    let Some(Program::Xdp(main)) = ebpf.program_mut(DISPATCHER_NAME) else {
        return Err(error("the dispatcher object lost its main program"));
    };
    main.load()
        .map_err(|e| RuntimeError::program(DISPATCHER_NAME, e))?;
    let dispatcher_fd = main
        .fd()
        .map_err(|e| RuntimeError::program(DISPATCHER_NAME, e))?
        .try_clone()
        .map_err(|e| RuntimeError::syscall("dup", e))?;
    let info = main
        .info()
        .map_err(|e| RuntimeError::program(DISPATCHER_NAME, e))?;
    let dispatcher_id = info.id();
    let slot_ids = slot_btf_ids(&info)?;

    // Link every slot's program into the new dispatcher.
    let mut linked: Vec<(OwnedFd, OwnedFd)> = Vec::with_capacity(slots.len());
    for (i, slot) in slots.into_iter().enumerate() {
        let prog = match slot {
            Slot::Existing(_, fd) => fd,
            Slot::New(new) => (new.load)(&dispatcher_fd, &object::slot_function(i))?,
        };
        let link =
            sys::link_freplace(prog.as_fd(), dispatcher_fd.as_fd(), slot_ids[i]).map_err(|e| {
                error(format!(
                    "linking the program of slot {i} into the new dispatcher: {e} (freplace \
                     re-attachment needs Linux 5.10)"
                ))
            })?;
        linked.push((prog, link));
    }
    let ids = linked
        .iter()
        .map(|(prog, _)| prog_id_of(prog.as_fd()))
        .collect::<Result<Vec<u32>, _>>()?;

    let dir = dispatcher_dir(ifindex, dispatcher_id);
    let pinned = pin_slots(&dir, &linked);
    if let Err(e) = pinned {
        remove_dir(&dir);
        return Err(e);
    }
    let swapped = match &old {
        Some((_, old_fd)) => netlink::xdp_set(
            ifindex,
            dispatcher_fd.as_fd().as_raw_fd(),
            Some(old_fd.as_raw_fd()),
            mode_flags,
        ),
        None => netlink::xdp_set(
            ifindex,
            dispatcher_fd.as_fd().as_raw_fd(),
            None,
            mode_flags | netlink::XDP_FLAGS_UPDATE_IF_NOEXIST,
        ),
    };
    if let Err(e) = swapped {
        remove_dir(&dir);
        let why = match e.raw_os_error() {
            Some(libc::EEXIST) | Some(libc::EBUSY) => {
                "another tool changed the interface's XDP program meanwhile, or holds it through \
                 a bpf_link: try again"
                    .to_string()
            }
            _ => e.to_string(),
        };
        return Err(error(format!(
            "attaching the dispatcher to ifindex {ifindex}: {why}"
        )));
    }
    if let Some((old_id, _)) = old {
        remove_dir(&dispatcher_dir(ifindex, old_id));
    }
    Ok((dispatcher_id, ids))
}

fn pin_slots(dir: &Path, linked: &[(OwnedFd, OwnedFd)]) -> Result<(), RuntimeError> {
    std::fs::create_dir_all(dir).map_err(|e| error(format!("creating {}: {e}", dir.display())))?;
    for (i, (prog, link)) in linked.iter().enumerate() {
        for (fd, what) in [(prog.as_fd(), "prog"), (link.as_fd(), "link")] {
            let path = dir.join(format!("prog{i}-{what}"));
            sys::obj_pin(fd, &path)
                .map_err(|e| error(format!("pinning {}: {e}", path.display())))?;
        }
    }
    Ok(())
}

/// Unpins a dispatcher directory; the links it held go with the last
/// reference. Best effort: a leftover is only a stale directory.
fn remove_dir(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    let _ = std::fs::remove_dir(dir);
}

/// Removes `dispatch-IFINDEX-ID` directories whose dispatcher no longer
/// runs on that interface (left by a crash between swap and cleanup).
pub fn remove_stale_dirs(ifindex: u32) -> Result<(), RuntimeError> {
    let _lock = ProtocolLock::acquire()?;
    let running = netlink::xdp_attached(ifindex)
        .map_err(|e| error(format!("reading the XDP program of ifindex {ifindex}: {e}")))?
        .map(|a| a.prog_id);
    let prefix = format!("dispatch-{ifindex}-");
    let Ok(entries) = std::fs::read_dir(pin_base()) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(id) = name
            .strip_prefix(&prefix)
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if Some(id) != running {
            remove_dir(&entry.path());
        }
    }
    Ok(())
}

fn prog_id_of(fd: BorrowedFd<'_>) -> Result<u32, RuntimeError> {
    sys::prog_id(fd).map_err(|e| RuntimeError::syscall("BPF_OBJ_GET_INFO_BY_FD", e))
}

/// BTF ids of `prog0`..`prog9` in the loaded dispatcher's BTF.
fn slot_btf_ids(info: &ProgramInfo) -> Result<Vec<u32>, RuntimeError> {
    let btf_id = info
        .btf_id()
        .ok_or_else(|| error("the loaded dispatcher has no BTF"))?;
    let bytes = sys::btf_bytes(btf_id)
        .map_err(|e| RuntimeError::syscall("reading the dispatcher's BTF", e))?;
    let btf = aya_obj::btf::Btf::parse(&bytes, aya::Endianness::default())
        .map_err(|e| error(format!("parsing the dispatcher's BTF: {e}")))?;
    (0..MAX_SLOTS)
        .map(|i| {
            btf.id_by_type_name_kind(&object::slot_function(i), aya_obj::btf::BtfKind::Func)
                .map_err(|e| error(format!("the dispatcher's BTF has no prog{i}: {e}")))
        })
        .collect()
}

/// Why this kernel cannot run programs in a dispatcher, if it cannot:
/// found by loading a dispatcher and an extension of its first slot
/// (some kernels refuse `BPF_PROG_TYPE_EXT` outright: EPERM). Probed
/// once per process.
pub fn extensions_unavailable() -> Option<String> {
    static PROBED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    PROBED.get_or_init(probe_extensions).clone()
}

fn probe_extensions() -> Option<String> {
    let attempt = || -> Result<(), String> {
        let mut dispatcher = EbpfLoader::new()
            .load(&object::dispatcher_object())
            .map_err(|e| e.to_string())?;
        let Some(Program::Xdp(main)) = dispatcher.program_mut(DISPATCHER_NAME) else {
            return Err("the dispatcher object has no main program".into());
        };
        main.load()
            .map_err(|e| format!("loading a dispatcher: {e}"))?;
        let target = main
            .fd()
            .map_err(|e| e.to_string())?
            .try_clone()
            .map_err(|e| e.to_string())?;
        let mut builder = flowstate_obj::ObjectBuilder::new();
        builder.add_program(flowstate_obj::ProgramDef {
            name: "probe_ext".into(),
            section: flowstate_obj::ProgramSection::Xdp,
            // r0 = XDP_PASS; exit
            insns: vec![0xb7, 0, 0, 0, 2, 0, 0, 0, 0x95, 0, 0, 0, 0, 0, 0, 0],
            map_relocs: Vec::new(),
        });
        let object = builder.build().map_err(|e| e.to_string())?;
        let mut ext = EbpfLoader::new()
            .extension("probe_ext")
            .load(&object)
            .map_err(|e| e.to_string())?;
        let Some(Program::Extension(program)) = ext.program_mut("probe_ext") else {
            return Err("the probe object has no extension".into());
        };
        program
            .load(target, &object::slot_function(0))
            .map_err(|e| match e {
                aya::programs::ProgramError::LoadError { io_error, .. } => io_error.to_string(),
                other => other.to_string(),
            })
    };
    attempt().err().map(|e| {
        format!(
            "this kernel does not load extension programs (BPF_PROG_TYPE_EXT, freplace), which \
             an XDP dispatcher needs: {e}"
        )
    })
}
