//! Byte-level access to any map by its fd: what the control plane and the
//! tests need to read state tables and counters without knowing their Rust
//! types.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use aya::maps::MapData;

use crate::{sys, RuntimeError};

// `enum bpf_map_type` numbers of the per-CPU maps, whose values are one
// slot per possible CPU.
const PER_CPU_MAP_TYPES: [u32; 4] = [
    5,  // PERCPU_HASH
    6,  // PERCPU_ARRAY
    10, // LRU_PERCPU_HASH
    21, // PERCPU_CGROUP_STORAGE
];

/// A `(key, value)` pair as raw bytes.
pub type Entry = (Vec<u8>, Vec<u8>);

/// `BPF_ANY`, `BPF_NOEXIST`, `BPF_EXIST` for [`RawMap::update`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateMode {
    /// Create or replace.
    Any = 0,
    /// Create only; fails if the key exists.
    NoExist = 1,
    /// Replace only; fails if the key is absent.
    Exist = 2,
}

/// A map opened by fd, with its sizes. Owns a duplicate of the fd, so it
/// outlives the [`crate::Loaded`] it came from and can be sent to other
/// threads.
#[derive(Debug)]
pub struct RawMap {
    name: String,
    /// The name the map was created with (`bpftool map show`).
    kernel_name: String,
    fd: OwnedFd,
    map_type: u32,
    key_size: usize,
    value_size: usize,
    max_entries: u32,
    /// Slots in a per-CPU value; 1 for other maps.
    cpus: usize,
}

impl RawMap {
    /// A map of an object loaded with aya directly (e.g. an extension
    /// loaded against a dispatcher), for byte-level access.
    pub fn from_map(name: &str, map: &aya::maps::Map) -> Result<RawMap, RuntimeError> {
        RawMap::from_map_data(name, crate::map_data(map))
    }

    pub(crate) fn from_map_data(name: &str, data: &MapData) -> Result<RawMap, RuntimeError> {
        let map_error = |source| RuntimeError::Map {
            map: name.to_string(),
            source,
        };
        let info = data.info().map_err(map_error)?;
        let fd = data
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(|io| RuntimeError::syscall("dup map fd", io))?;
        let map_type = info.map_type().map_or(0, |t| t as u32);
        let cpus = if PER_CPU_MAP_TYPES.contains(&map_type) {
            aya::util::nr_cpus().map_err(|(_, io)| RuntimeError::syscall("nr_cpus", io))?
        } else {
            1
        };
        Ok(RawMap {
            name: name.to_string(),
            kernel_name: info.name_as_str().unwrap_or_default().to_string(),
            fd,
            map_type,
            key_size: info.key_size() as usize,
            value_size: info.value_size() as usize,
            max_entries: info.max_entries(),
            cpus,
        })
    }

    /// Opens the map with kernel id `id` (as a program's info lists them);
    /// [`RawMap::name`] is its kernel name.
    pub fn from_id(id: u32) -> Result<RawMap, RuntimeError> {
        let map_error = |source| RuntimeError::Map {
            map: format!("map id {id}"),
            source,
        };
        let data = MapData::from_id(id).map_err(map_error)?;
        let info = data.info().map_err(map_error)?;
        let name = info.name_as_str().unwrap_or_default().to_string();
        RawMap::from_map_data(&name, &data)
    }

    /// Opens a map pinned on bpffs (e.g. by [`crate::Loaded::pin_map`]).
    pub fn from_pin(path: impl AsRef<Path>) -> Result<RawMap, RuntimeError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let data = MapData::from_pin(path).map_err(|source| RuntimeError::Map {
            map: name.clone(),
            source,
        })?;
        RawMap::from_map_data(&name, &data)
    }

    /// The maps program `prog_id` uses, by name (e.g. those of a program
    /// another tool loaded).
    pub fn of_program(prog_id: u32) -> Result<Vec<RawMap>, RuntimeError> {
        let info = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|p| p.id() == prog_id)
            .ok_or_else(|| RuntimeError::NoSuchProgram(format!("id {prog_id}")))?;
        let ids = info
            .map_ids()
            .map_err(|e| RuntimeError::program(&format!("id {prog_id}"), e))?
            .unwrap_or_default();
        ids.into_iter()
            .map(|id| {
                let named = |source| RuntimeError::Map {
                    map: format!("id {id}"),
                    source,
                };
                let data = MapData::from_id(id).map_err(named)?;
                let name = data
                    .info()
                    .map_err(named)?
                    .name_as_str()
                    .unwrap_or("")
                    .to_string();
                RawMap::from_map_data(&name, &data)
            })
            .collect()
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name the kernel knows the map by (cut to 15 bytes), whatever
    /// it was opened through.
    pub fn kernel_name(&self) -> &str {
        &self.kernel_name
    }

    pub(crate) fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// The kernel's `bpf_map_type` number.
    pub fn map_type(&self) -> u32 {
        self.map_type
    }

    pub fn key_size(&self) -> usize {
        self.key_size
    }

    /// Size of one value (one CPU's slot for per-CPU maps).
    pub fn value_size(&self) -> usize {
        self.value_size
    }

    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    pub fn is_per_cpu(&self) -> bool {
        PER_CPU_MAP_TYPES.contains(&self.map_type)
    }

    fn check_len(&self, what: &'static str, got: usize, want: usize) -> Result<(), RuntimeError> {
        if got == want {
            Ok(())
        } else {
            Err(RuntimeError::WrongSize {
                map: self.name.clone(),
                what,
                expected: want,
                got,
            })
        }
    }

    /// Per-CPU values are stored in 8-byte aligned slots.
    fn slot_size(&self) -> usize {
        if self.is_per_cpu() {
            self.value_size.next_multiple_of(8)
        } else {
            self.value_size
        }
    }

    fn syscall_error(&self, call: &'static str) -> impl FnOnce(std::io::Error) -> RuntimeError {
        let map = self.name.clone();
        move |io| RuntimeError::MapSyscall { map, call, io }
    }

    /// The value under `key`, or `None`. For a per-CPU map, every CPU's
    /// slot back to back (see [`RawMap::lookup_per_cpu`]).
    pub fn lookup(&self, key: &[u8]) -> Result<Option<Vec<u8>>, RuntimeError> {
        self.check_len("key", key.len(), self.key_size)?;
        let mut value = vec![0u8; self.slot_size() * self.cpus];
        let found = sys::lookup(self.fd.as_fd(), key, &mut value)
            .map_err(self.syscall_error("BPF_MAP_LOOKUP_ELEM"))?;
        Ok(found.then_some(value))
    }

    /// One value per possible CPU (each `value_size` bytes).
    pub fn lookup_per_cpu(&self, key: &[u8]) -> Result<Option<Vec<Vec<u8>>>, RuntimeError> {
        let slot = self.slot_size();
        Ok(self.lookup(key)?.map(|all| {
            all.chunks(slot.max(1))
                .map(|c| c[..self.value_size].to_vec())
                .collect()
        }))
    }

    /// Reads a per-CPU value as little-endian `u64` words and sums each
    /// word over the CPUs: how per-CPU packet and byte counters add up.
    /// Also works on a plain map (one CPU). `None` when the key is absent.
    pub fn sum_u64_per_cpu(&self, key: &[u8]) -> Result<Option<Vec<u64>>, RuntimeError> {
        let Some(values) = self.lookup_per_cpu(key)? else {
            return Ok(None);
        };
        let mut sums = vec![0u64; self.value_size / 8];
        for value in &values {
            for (sum, word) in sums.iter_mut().zip(value.chunks_exact(8)) {
                let word: [u8; 8] = word.try_into().unwrap_or([0; 8]);
                *sum = sum.wrapping_add(u64::from_le_bytes(word));
            }
        }
        Ok(Some(sums))
    }

    /// Writes `value` under `key`. For a per-CPU map `value` is one slot
    /// and is written to every CPU.
    pub fn update(&self, key: &[u8], value: &[u8], mode: UpdateMode) -> Result<(), RuntimeError> {
        self.check_len("key", key.len(), self.key_size)?;
        self.check_len("value", value.len(), self.value_size)?;
        let slot = self.slot_size();
        let mut all = vec![0u8; slot * self.cpus];
        for chunk in all.chunks_mut(slot.max(1)) {
            chunk[..value.len()].copy_from_slice(value);
        }
        sys::update(self.fd.as_fd(), key, &all, mode as u64)
            .map_err(self.syscall_error("BPF_MAP_UPDATE_ELEM"))
    }

    /// Removes `key`; `Ok(false)` if it was absent. Arrays refuse deletes.
    pub fn delete(&self, key: &[u8]) -> Result<bool, RuntimeError> {
        self.check_len("key", key.len(), self.key_size)?;
        sys::delete(self.fd.as_fd(), key).map_err(self.syscall_error("BPF_MAP_DELETE_ELEM"))
    }

    /// Every key, in the kernel's iteration order. Entries added or removed
    /// meanwhile may or may not appear (the kernel's rule for hash maps).
    pub fn keys(&self) -> Result<Vec<Vec<u8>>, RuntimeError> {
        let mut keys: Vec<Vec<u8>> = Vec::new();
        loop {
            let mut next = vec![0u8; self.key_size];
            let more = sys::next_key(self.fd.as_fd(), keys.last().map(Vec::as_slice), &mut next)
                .map_err(self.syscall_error("BPF_MAP_GET_NEXT_KEY"))?;
            if !more {
                return Ok(keys);
            }
            // Bounded: a map never yields more keys than it can hold,
            // unless entries churn; stop there rather than loop forever.
            if keys.len() > self.max_entries as usize {
                return Ok(keys);
            }
            keys.push(next);
        }
    }

    /// Every `(key, value)`; a key deleted between listing and reading is
    /// skipped.
    pub fn entries(&self) -> Result<Vec<Entry>, RuntimeError> {
        let mut entries = Vec::new();
        for key in self.keys()? {
            if let Some(value) = self.lookup(&key)? {
                entries.push((key, value));
            }
        }
        Ok(entries)
    }

    /// Array element `index`.
    pub fn array_get(&self, index: u32) -> Result<Vec<u8>, RuntimeError> {
        self.lookup(&index.to_le_bytes())?
            .ok_or_else(|| RuntimeError::IndexOutOfRange {
                map: self.name.clone(),
                index,
            })
    }

    pub fn array_set(&self, index: u32, value: &[u8]) -> Result<(), RuntimeError> {
        if index >= self.max_entries {
            return Err(RuntimeError::IndexOutOfRange {
                map: self.name.clone(),
                index,
            });
        }
        self.update(&index.to_le_bytes(), value, UpdateMode::Any)
    }
}

/// Creates an array map of one element named `name`, its key and value
/// typed by BTF types `types` (key, value) of the standalone blob `btf`
/// (so `bpftool map dump` names the value's members), starting as
/// `value`, and pins it at `path`; returns it opened from the pin. A
/// loader told to reuse the pin (aya's `map_pin_path`) then uses it as it
/// is.
pub fn create_pinned_typed_array(
    path: &Path,
    name: &str,
    btf: &[u8],
    types: (u32, u32),
    value: &[u8],
) -> Result<RawMap, RuntimeError> {
    let btf_fd = crate::sys::btf_load(btf).map_err(|e| RuntimeError::syscall("loading BTF", e))?;
    let fd = crate::sys::array_with_btf(name, value.len() as u32, btf_fd.as_fd(), types)
        .map_err(|e| RuntimeError::syscall("creating a map", e))?;
    crate::sys::update(fd.as_fd(), &0u32.to_le_bytes(), value, 0)
        .map_err(|e| RuntimeError::syscall("writing a map's initial value", e))?;
    crate::sys::obj_pin(fd.as_fd(), path).map_err(|e| RuntimeError::syscall("pinning a map", e))?;
    RawMap::from_pin(path)
}
