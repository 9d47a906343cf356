//! Standard output that closes early: `flowstate replay ... | head` ends
//! quietly, as `cat | head` does.
//!
//! Rust ignores SIGPIPE, so writing to a closed pipe fails with EPIPE:
//! `println!` panics and `writeln!` returns the error. Both end the command
//! with the status a SIGPIPE death gives (141) and no message. The panic
//! still unwinds, so cleanup that runs on drop (the demo's namespaces,
//! instance locks) is not skipped, as it would be if SIGPIPE killed us.

use std::any::Any;
use std::io::ErrorKind;

/// 128 + SIGPIPE: what a shell reports for a command killed by SIGPIPE.
pub const BROKEN_PIPE_STATUS: u8 = 141;

/// Silence the panic message of a print to a closed pipe; other panics
/// are reported as before.
pub fn quiet_broken_pipe_panics() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !is_broken_pipe_panic(info.payload()) {
            report(info);
        }
    }));
}

/// A panic from `print!`/`eprint!` whose stream is a closed pipe.
pub fn is_broken_pipe_panic(payload: &(dyn Any + Send)) -> bool {
    let message = payload
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| payload.downcast_ref::<&str>().copied());
    // std's wording: "failed printing to stdout: Broken pipe (os error 32)".
    message.is_some_and(|m| m.starts_with("failed printing to std") && m.contains("os error 32"))
}

/// An error that comes from writing to a closed pipe.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == ErrorKind::BrokenPipe)
    })
}
