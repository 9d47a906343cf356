//! Running one instance from a [`Placement`], choosing exactly as the
//! CLI's `flowstate run` does (hook, XDP mode and sharing, TC placement).

use std::path::Path;

use flowstate_control::{
    AttachPoint, ControlError, Instance, Order, Relative, RunSpec, TcPlacement, TcVia,
};
use flowstate_lang::ir::Hook;

use crate::config::{HookName, Placement, TcAttach, XdpMode, XdpShare};

pub fn run(
    name: &str,
    program: &Path,
    dev: &str,
    placement: &Placement,
) -> Result<Instance, ControlError> {
    // The program's own hook, when the placement names none (a program
    // with errors is left for control to report).
    let own_hook = std::fs::read_to_string(program)
        .ok()
        .and_then(|text| flowstate_lang::compile(&text).ok())
        .map(|c| c.program.hook);
    let xdp_mode = match placement.xdp_mode {
        XdpMode::Auto => flowstate_control::XdpMode::Auto,
        XdpMode::Native => flowstate_control::XdpMode::Native,
        XdpMode::Generic => flowstate_control::XdpMode::Generic,
    };
    let attach = match placement.hook {
        Some(HookName::Xdp) => Some(AttachPoint::Xdp { mode: xdp_mode }),
        Some(HookName::TcIngress) => Some(AttachPoint::TcIngress),
        Some(HookName::TcEgress) => Some(AttachPoint::TcEgress),
        None if own_hook == Some(Hook::Xdp) => Some(AttachPoint::Xdp { mode: xdp_mode }),
        None => None,
    };
    let spec = RunSpec {
        program_path: program.to_path_buf(),
        dev: dev.to_string(),
        attach,
        name: Some(name.to_string()),
        tc: TcPlacement {
            via: match placement.tc_attach {
                TcAttach::Auto => TcVia::Auto,
                TcAttach::Tcx => TcVia::Tcx,
                TcAttach::Clsact => TcVia::Clsact,
            },
            order: match (&placement.before, &placement.after) {
                (Some(r), _) => Order::Before(Relative::parse(r)),
                (None, Some(r)) => Order::After(Relative::parse(r)),
                (None, None) => Order::Last,
            },
        },
    };
    let share = match placement.xdp_share {
        XdpShare::Shared => flowstate_control::XdpShare::Shared,
        XdpShare::Exclusive => flowstate_control::XdpShare::Exclusive,
        XdpShare::Auto => flowstate_control::XdpShare::Auto,
    };
    flowstate_control::run_placed(&spec, placement.netns.as_deref(), share, placement.priority)
}
