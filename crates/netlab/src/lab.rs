//! The demo's network: a client and a server on two subnets, and a switch
//! (a router) between them where programs run.
//!
//! ```text
//!  client                 switch                         server
//!  eth0 10.0.1.2/24 ── to-client 10.0.1.1/24
//!                         to-server 10.0.2.1/24 ── eth0 10.0.2.2/24
//! ```
//!
//! Client-to-server packets enter the switch on `to-client` (where XDP and
//! TC ingress programs see them) and leave on `to-server`.

use std::net::Ipv4Addr;

use crate::{Netns, Result, Topology};

/// Client, switch and server namespaces, linked and routed. Dropping it
/// removes them (the [`Topology`] inside).
#[derive(Debug)]
pub struct SwitchLab {
    pub client: Netns,
    pub switch: Netns,
    pub server: Netns,
    pub topology: Topology,
}

impl SwitchLab {
    pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
    pub const SWITCH_CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
    pub const SWITCH_SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 1);
    pub const SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    pub const CLIENT_DEV: &'static str = "eth0";
    /// The switch's client-facing interface: where the programs run.
    pub const SWITCH_CLIENT_DEV: &'static str = "to-client";
    pub const SWITCH_SERVER_DEV: &'static str = "to-server";
    pub const SERVER_DEV: &'static str = "eth0";

    /// Builds the three namespaces, both links, addresses, routes, and
    /// forwarding on the switch. `tag` goes into the namespace names.
    pub fn build(tag: &str) -> Result<SwitchLab> {
        let mut topology = Topology::new(tag)?;
        let client = topology.add_netns("client")?;
        let switch = topology.add_netns("switch")?;
        let server = topology.add_netns("server")?;
        topology.link(
            &client,
            Self::CLIENT_DEV,
            Self::CLIENT_ADDR,
            &switch,
            Self::SWITCH_CLIENT_DEV,
            Self::SWITCH_CLIENT_ADDR,
            24,
        )?;
        topology.link(
            &switch,
            Self::SWITCH_SERVER_DEV,
            Self::SWITCH_SERVER_ADDR,
            &server,
            Self::SERVER_DEV,
            Self::SERVER_ADDR,
            24,
        )?;
        client.add_default_route(Self::SWITCH_CLIENT_ADDR)?;
        server.add_default_route(Self::SWITCH_SERVER_ADDR)?;
        switch.sysctl("net.ipv4.ip_forward", "1")?;
        Ok(SwitchLab {
            client,
            switch,
            server,
            topology,
        })
    }
}
