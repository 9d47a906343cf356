//! flowstate-bench: the pieces of `cargo bench -p flowstate-bench`.
//!
//! The benchmark itself (`benches/kernel.rs`) runs programs in the kernel
//! with `BPF_PROG_TEST_RUN` and prints a table; this library holds what it
//! is built from, so that each piece is tested without a kernel or clang:
//!
//! - [`frames`]: the 60-byte test frames.
//! - [`bare`]: the bare `XDP_PASS` / `TC_ACT_OK` program, built with
//!   flowstate-asm and flowstate-obj.
//! - [`generate`]: program text for the table-scaling figures.
//! - [`clang`]: finding clang and compiling the C baselines in `bench/c`.
//! - [`measure`]: medians of kernel-reported durations.
//! - [`replay`]: the `flowstate replay --quiet` loop, timed.
//! - [`report`]: figures, floors, the printed table and the JSON file.

pub mod bare;
pub mod clang;
pub mod frames;
pub mod generate;
pub mod measure;
pub mod replay;
pub mod report;
