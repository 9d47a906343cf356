//! The interfaces of `redirect IFNAME`, resolved where the program runs.
//!
//! An object names its redirect targets, not their ifindexes: each
//! distinct name has a slot in the `ports` map
//! ([`flowstate_codegen::layout::PORTS_MAP`]). `run` and `reload` look the
//! names up in the instance's network namespace and fill the slots before
//! the program is attached, so one object runs on any host. A name missing
//! there stops the command before anything changes.

use flowstate_codegen::Layout;

use crate::netns::Place;
use crate::{kernel, netns, ControlError};

/// The ifindex of each of `layout`'s ports, by slot, looked up in the
/// caller's namespace.
pub(crate) fn resolve_here(layout: &Layout) -> Result<Vec<u32>, String> {
    layout
        .ports
        .iter()
        .map(|name| kernel::ifindex(name).map_err(|_| name.clone()))
        .collect()
}

/// [`resolve_here`] in the namespace of `place`.
pub(crate) fn resolve_at(layout: &Layout, place: &Place) -> Result<Vec<u32>, ControlError> {
    if layout.ports.is_empty() {
        return Ok(Vec::new());
    }
    let found = netns::run_at(place, || resolve_here(layout))
        .map_err(|reason| ControlError::kernel("looking up the redirect interfaces", reason))?;
    found.map_err(|port| missing(port, place))
}

/// The error for a redirect target that is not there.
pub(crate) fn missing(port: String, place: &Place) -> ControlError {
    ControlError::NoSuchPort {
        port,
        place: place.describe(),
    }
}
