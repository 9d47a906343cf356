//! Live edits through the editor program (`flowstate_codegen::editor`):
//! compiled for the running program's layout, loaded once per [`Handle`]
//! on the instance's own maps (opened from their pins), and run once per
//! edit with `BPF_PROG_TEST_RUN`, so every change to a flow or a global
//! follows the per-flow protocol the packets follow.
//!
//! [`Handle`]: crate::Handle

use flowstate_codegen::editor::{self, Editor, Outcome, Request};
use flowstate_lang::ir::Program;
use flowstate_runtime::{RawMap, RawProgram, RuntimeError};

use crate::ControlError;

/// The editor, in the kernel.
pub(crate) struct Editing {
    editor: Editor,
    program: RawProgram,
}

/// How long an edit that finds its flow held is tried again.
const BUSY_RETRY_FOR: std::time::Duration = std::time::Duration::from_secs(1);

impl Editing {
    /// Compiles and loads the editor of `program` on the maps `map_of`
    /// gives by name (the instance's flows and globals).
    pub fn load<'m>(
        program: &Program,
        map_of: impl Fn(&str) -> Option<&'m RawMap>,
    ) -> Result<Editing, ControlError> {
        let editor = editor::compile_for(program, false, &crate::host::target())
            .map_err(|e| ControlError::Codegen(format!("the editor program: {e}")))?;
        let mut relocs = Vec::with_capacity(editor.map_relocs.len());
        for (index, name) in &editor.map_relocs {
            let map = map_of(name).ok_or_else(|| {
                ControlError::kernel(
                    "loading the editor",
                    format!("the instance has no {name} map"),
                )
            })?;
            relocs.push((*index, map));
        }
        let program = RawProgram::load_xdp_with_btf(
            editor::PROGRAM_NAME,
            &editor.insns,
            &relocs,
            editor.functions.as_ref(),
        )
        .map_err(|e| match e {
            RuntimeError::Verifier { log, .. } => ControlError::Verifier {
                log: format!("{log}\n(the editor program)\n{}", editor.listing),
            },
            other if other.to_string().contains("Operation not permitted") => {
                ControlError::NeedsRoot
            }
            other => ControlError::kernel("loading the editor", other),
        })?;
        Ok(Editing { editor, program })
    }

    /// Runs one request. Refusals that are the user's to act on (a full
    /// table, an entry left locked) come back as errors naming `what`.
    pub fn run(&self, what: &str, request: Request) -> Result<Outcome, ControlError> {
        let bytes = self
            .editor
            .encode(&request)
            .map_err(|e| ControlError::kernel(what, e))?;
        // An editor built for a kernel without `may_goto` waits only a few
        // rounds for a held entry, then says `Busy` having changed
        // nothing: it is run again, here, for up to BUSY_RETRY_FOR.
        let started = std::time::Instant::now();
        let outcome = loop {
            let reply = self
                .program
                .test_run(&bytes)
                .map_err(|e| ControlError::kernel(format!("{what}: running the editor"), e))?;
            let outcome = self
                .editor
                .decode(&request, &reply.data_out)
                .map_err(|e| ControlError::kernel(what, e))?;
            if outcome != Outcome::Busy || started.elapsed() > BUSY_RETRY_FOR {
                break outcome;
            }
            std::thread::sleep(std::time::Duration::from_micros(50));
        };
        match outcome {
            Outcome::TableFull => Err(ControlError::kernel(
                what,
                "the state table is full and refuses new flows (`flows N refuse`): delete \
                 flows, or reload with a larger capacity or `evict`",
            )),
            Outcome::Busy => Err(ControlError::kernel(
                what,
                "the flow's entry stayed locked for the kernel's whole wait, so nothing was \
                 changed; try again (an entry that stays locked is a flowstate bug: `flow KEY \
                 delete` waits for the same lock)",
            )),
            Outcome::BadRequest => Err(ControlError::kernel(
                what,
                "the editor refused the request (a flowstate bug: please report it)",
            )),
            other => Ok(other),
        }
    }
}
