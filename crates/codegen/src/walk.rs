//! The verifier's walk, estimated on the emitted code.
//!
//! The kernel's verifier walks a program depth first: at a conditional
//! jump it goes on with the fall-through and keeps the jump's target
//! pending on a stack, and it refuses a program once more than
//! [`VERIFIER_PENDING_LIMIT`] branches are pending on one path ("the
//! sequence of 8193 jumps is too complex"), whatever its instruction
//! budget says. A long chain of row tests reaches that before the million
//! instructions do, so [`pending_branches`] replays the walk's order on
//! the control flow graph and `check_limits` refuses a program whose
//! estimate passes [`PENDING_LIMIT`].
//!
//! The estimate keeps no register state: it walks each instruction at
//! most [`WALKS`] times (the verifier walks the table once for a packet's
//! first pass and once more, from `again`, for the locked pass, pruning
//! further walks whose state it has seen) and never knows a branch's
//! outcome in advance (the verifier sometimes does, and then pushes
//! nothing). Both make it an overestimate of the shapes flowstate emits;
//! `tests/kernel.rs` checks it against the kernel near the limit.

use flowstate_asm::Insn;

/// The kernel's `BPF_COMPLEXITY_LIMIT_JMP_SEQ`.
pub const VERIFIER_PENDING_LIMIT: usize = 8192;

/// What `check_limits` accepts: the kernel's limit with a margin for what
/// the estimate does not see.
pub const PENDING_LIMIT: usize = VERIFIER_PENDING_LIMIT * 7 / 8;

/// How often the estimate walks one instruction.
const WALKS: u8 = 2;

const JMP_JA: u8 = 0x05;
const JMP_EXIT: u8 = 0x95;

/// The most branches the verifier's depth-first walk keeps pending at
/// once, estimated.
pub fn pending_branches(insns: &[Insn]) -> usize {
    let mut walked = vec![0u8; insns.len()];
    let mut pending: Vec<usize> = Vec::new();
    let mut most = 0;
    let mut at = Some(0usize);
    loop {
        let pc = match at {
            Some(pc) if pc < insns.len() && walked[pc] < WALKS => pc,
            _ => match pending.pop() {
                Some(pc) => {
                    at = Some(pc);
                    continue;
                }
                None => return most,
            },
        };
        walked[pc] += 1;
        let insn = insns[pc];
        let target = insn
            .jump_offset()
            .and_then(|off| usize::try_from(pc as i64 + 1 + off).ok());
        at = if insn.code == JMP_EXIT {
            None
        } else if insn.code == JMP_JA || insn.is_gotol() {
            target
        } else if insn.is_jump() {
            if let Some(target) = target {
                pending.push(target);
                most = most.max(pending.len());
            }
            Some(pc + 1)
        } else if insn.is_wide() {
            Some(pc + 2)
        } else {
            Some(pc + 1)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowstate_asm::Reg::*;

    #[test]
    fn a_chain_of_tests_keeps_one_branch_pending_per_extra_test() {
        // n rows of two tests each: `if r1 != k goto next_row`, then a
        // second test whose failure is the next row and whose success
        // exits; the first test's target stays pending.
        let n = 100;
        let mut code = Vec::new();
        for k in 0..n {
            code.push(Insn::jne(R1, k, 3));
            code.push(Insn::jne(R2, k, 2));
            code.push(Insn::mov64(R0, 1));
            code.push(Insn::exit());
        }
        code.push(Insn::mov64(R0, 2));
        code.push(Insn::exit());
        let depth = pending_branches(&code);
        assert!(
            (n as usize..=2 * n as usize + 2).contains(&depth),
            "{depth}"
        );
    }

    #[test]
    fn a_binary_search_keeps_its_depth_pending() {
        // A balanced tree of 2^10 leaves: at most one pending branch per
        // level on any path (times the walks).
        fn tree(code: &mut Vec<Insn>, depth: u32) {
            if depth == 0 {
                code.push(Insn::mov64(R0, 1));
                code.push(Insn::exit());
                return;
            }
            let at = code.len();
            code.push(Insn::ja(0));
            tree(code, depth - 1);
            let skip = (code.len() - at - 1) as i16;
            code[at] = Insn::jgt(R1, 7, skip);
            tree(code, depth - 1);
        }
        let mut code = Vec::new();
        tree(&mut code, 10);
        let depth = pending_branches(&code);
        assert!(depth <= 10 * WALKS as usize, "{depth}");
    }
}
