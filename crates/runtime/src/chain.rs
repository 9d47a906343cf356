//! A service chain loaded for `BPF_PROG_TEST_RUN` (tests, the
//! differential suite, benchmarks): N functions compiled with
//! `flowstate_codegen::Options::chain` (function i with
//! `ChainLink::after(i)`), sharing one program array in which slot i holds
//! function i. Running the head runs the chain: each `pass` tail-calls the
//! next function, the last one's `pass` is the verdict.
//!
//! The array is shared the only way aya 0.14 offers, through a pin: it is
//! pinned under a directory of this process's own while the functions
//! load, and the directory is removed before [`load_chain`] returns (the
//! programs hold the array from then on), so nothing is left on bpffs.

use std::path::PathBuf;

use crate::{load_sharing, LoadOptions, Loaded, RawMap, RuntimeError, TestRunResult, UpdateMode};

/// The chain's program array, as `flowstate_codegen::chain::CHAIN_MAP`
/// names it in each function's object.
pub const CHAIN_MAP: &str = "chain";

/// One function of a chain: its object and its program's symbol.
#[derive(Debug, Clone, Copy)]
pub struct ChainFunction<'a> {
    pub object: &'a [u8],
    pub program: &'a str,
}

/// The functions of a chain in the kernel, in chain order.
#[derive(Debug)]
pub struct LoadedChain {
    functions: Vec<(Loaded, String)>,
}

/// Loads `functions` (chain order; at least one) and links them through
/// one program array. Each function keeps maps of its own.
pub fn load_chain(
    functions: &[ChainFunction<'_>],
    options: &LoadOptions,
) -> Result<LoadedChain, RuntimeError> {
    if functions.is_empty() {
        return Err(RuntimeError::NoSuchProgram(
            "a chain needs at least one function".to_string(),
        ));
    }
    let pins = PinDir::new()?;
    let array_pin = pins.0.join(CHAIN_MAP);
    let mut loaded = Vec::with_capacity(functions.len());
    for function in functions {
        let shared = [(CHAIN_MAP, array_pin.as_path())];
        let object = load_sharing(function.object, &shared, options)?;
        loaded.push((object, function.program.to_string()));
    }
    if loaded.len() == 1 {
        // Nothing to fill (and an object built without the chain option
        // has no array: a lone program loads here too, for comparisons).
        return Ok(LoadedChain { functions: loaded });
    }
    let array = RawMap::from_pin(&array_pin)?;
    // The head is run directly; every later function waits in its slot.
    for (slot, (object, program)) in loaded.iter().enumerate().skip(1) {
        use std::os::fd::AsRawFd;
        let fd = object.program_fd(program)?.as_raw_fd() as u32;
        array.update(
            &(slot as u32).to_le_bytes(),
            &fd.to_le_bytes(),
            UpdateMode::Any,
        )?;
    }
    Ok(LoadedChain { functions: loaded })
}

impl LoadedChain {
    /// How many functions the chain has.
    pub fn len(&self) -> usize {
        self.functions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.functions.is_empty()
    }

    /// Function `index` (0 is the head): its maps, its stats.
    pub fn function(&self, index: usize) -> Option<(&Loaded, &str)> {
        self.functions
            .get(index)
            .map(|(loaded, program)| (loaded, program.as_str()))
    }

    /// Runs the chain (its head) on `packet`.
    pub fn test_run(&self, packet: &[u8], repeat: u32) -> Result<TestRunResult, RuntimeError> {
        let (head, program) = &self.functions[0];
        head.test_run(program, packet, repeat)
    }

    /// [`LoadedChain::test_run`] with a context (see
    /// [`Loaded::test_run_with_ctx`]).
    pub fn test_run_with_ctx(
        &self,
        packet: &[u8],
        ctx_in: Option<&[u8]>,
        repeat: u32,
    ) -> Result<TestRunResult, RuntimeError> {
        let (head, program) = &self.functions[0];
        head.test_run_with_ctx(program, packet, ctx_in, repeat)
    }
}

/// A directory of this process's own on bpffs, removed on drop.
struct PinDir(PathBuf);

impl PinDir {
    fn new() -> Result<PinDir, RuntimeError> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let dir = PathBuf::from(crate::BPFFS_ROOT).join(format!(
            "flowstate-chain-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        crate::ensure_bpffs(crate::BPFFS_ROOT)?;
        std::fs::create_dir_all(&dir).map_err(|io| RuntimeError::syscall("mkdir", io))?;
        Ok(PinDir(dir))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
