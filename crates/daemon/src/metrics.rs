//! Prometheus text exposition (format 0.0.4) of every running instance.
//!
//! Written by hand rather than with `prometheus-client`: that crate keeps
//! metric objects that the program updates as things happen, while here
//! every value already lives in the kernel's maps and is read afresh at
//! each scrape (a collector). The format is a few lines per family and
//! label escaping; a registry would add a dependency and a copy.
//!
//! Families (labels `instance`, `dev`, `netns` on every sample; `netns`
//! is empty for the daemon's own namespace):
//! - `flowstate_row_packets_total`, `flowstate_row_bytes_total` (`row`:
//!   the row's source line; `row="default"` for the default action)
//! - `flowstate_flows` (`state`): entries of the state table per state
//! - `flowstate_table_entries`, `flowstate_table_capacity`
//! - `flowstate_contention_total`: packets that gave up on a flow's lock
//! - `flowstate_refused_total`: new flows refused by a full table
//! - `flowstate_controller_packets_total`: packets of `controller` rows
//!   (each sends an event unless the ring buffer is full)
//! - `flowstate_reloads_total`
//! - `flowstate_instance_info` (`hook`, `mode`, `prog_id`,
//!   `source_hash`, `owner`): 1 per instance
//! - `flowstate_scrape_errors`: instances that could not be read (1 each,
//!   `error` label), so a broken one is visible rather than missing

use std::fmt::Write;

use flowstate_control::{Instance, Stats};

/// One family's samples.
struct Family {
    name: &'static str,
    kind: &'static str,
    help: &'static str,
    samples: Vec<(String, String)>,
}

impl Family {
    fn new(name: &'static str, kind: &'static str, help: &'static str) -> Family {
        Family {
            name,
            kind,
            help,
            samples: Vec::new(),
        }
    }

    fn add(&mut self, labels: &[(&str, &str)], value: impl ToString) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
            .collect();
        self.samples
            .push((format!("{{{}}}", labels.join(",")), value.to_string()));
    }
}

/// Label values escape `\`, `"` and newlines.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What one instance contributes.
pub struct Sample<'a> {
    pub instance: &'a Instance,
    /// `config`, `api`, or `none` (not started by the daemon).
    pub owner: &'a str,
    /// The state table's capacity and which rows are `controller` rows
    /// (by index), from the program.
    pub capacity: u32,
    pub controller_rows: Vec<usize>,
    pub stats: Result<Stats, String>,
}

/// The exposition text for `samples`.
pub fn render(samples: &[Sample]) -> String {
    let mut row_packets = Family::new(
        "flowstate_row_packets_total",
        "counter",
        "Packets that matched a table row (row: source line, or default).",
    );
    let mut row_bytes = Family::new(
        "flowstate_row_bytes_total",
        "counter",
        "Bytes of the packets that matched a table row.",
    );
    let mut flows = Family::new("flowstate_flows", "gauge", "State table entries per state.");
    let mut entries = Family::new(
        "flowstate_table_entries",
        "gauge",
        "Entries in the state table.",
    );
    let mut capacity = Family::new(
        "flowstate_table_capacity",
        "gauge",
        "Capacity of the state table.",
    );
    let mut contention = Family::new(
        "flowstate_contention_total",
        "counter",
        "Packets that gave up waiting for their flow's lock (then got the default action).",
    );
    let mut refused = Family::new(
        "flowstate_refused_total",
        "counter",
        "New flows refused because the state table was full.",
    );
    let mut controller = Family::new(
        "flowstate_controller_packets_total",
        "counter",
        "Packets of controller rows (each sends an event unless the ring buffer is full).",
    );
    let mut reloads = Family::new(
        "flowstate_reloads_total",
        "counter",
        "Times the instance's program was hot-replaced.",
    );
    let mut info = Family::new(
        "flowstate_instance_info",
        "gauge",
        "One per running instance, with its attachment in labels.",
    );
    let mut errors = Family::new(
        "flowstate_scrape_errors",
        "gauge",
        "Instances whose maps could not be read at this scrape.",
    );
    for sample in samples {
        let i = sample.instance;
        let netns = i.netns.as_deref().unwrap_or("");
        let base = [
            ("instance", i.name.as_str()),
            ("dev", i.dev.as_str()),
            ("netns", netns),
        ];
        let with = |extra: &[(&'static str, &str)]| -> Vec<(&str, String)> {
            base.iter()
                .chain(extra)
                .map(|(k, v)| (*k, v.to_string()))
                .collect()
        };
        let add = |family: &mut Family, extra: &[(&'static str, &str)], value: String| {
            let labels = with(extra);
            let refs: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            family.add(&refs, value);
        };
        let prog_id = i.prog_id.to_string();
        add(
            &mut info,
            &[
                ("hook", i.attach.hook_name()),
                ("mode", i.mode.as_str()),
                ("prog_id", prog_id.as_str()),
                ("source_hash", i.source_hash.as_str()),
                ("owner", sample.owner),
            ],
            "1".into(),
        );
        add(&mut reloads, &[], i.reloads.to_string());
        let stats = match &sample.stats {
            Ok(stats) => stats,
            Err(error) => {
                add(&mut errors, &[("error", error.as_str())], "1".into());
                continue;
            }
        };
        let mut controller_packets = 0u64;
        for (index, row) in stats.rows.iter().enumerate() {
            let line = row.line.to_string();
            add(&mut row_packets, &[("row", &line)], row.packets.to_string());
            add(&mut row_bytes, &[("row", &line)], row.bytes.to_string());
            if sample.controller_rows.contains(&index) {
                controller_packets += row.packets;
            }
        }
        let (default_packets, default_bytes) = stats.default;
        add(
            &mut row_packets,
            &[("row", "default")],
            default_packets.to_string(),
        );
        add(
            &mut row_bytes,
            &[("row", "default")],
            default_bytes.to_string(),
        );
        let mut total = 0usize;
        for (state, n) in &stats.flows_by_state {
            add(&mut flows, &[("state", state.as_str())], n.to_string());
            total += n;
        }
        add(&mut entries, &[], total.to_string());
        add(&mut capacity, &[], sample.capacity.to_string());
        add(&mut contention, &[], stats.contention.to_string());
        add(&mut refused, &[], stats.table_full.to_string());
        add(&mut controller, &[], controller_packets.to_string());
    }
    let mut out = String::new();
    for family in [
        row_packets,
        row_bytes,
        flows,
        entries,
        capacity,
        contention,
        refused,
        controller,
        reloads,
        info,
        errors,
    ] {
        write_family(&mut out, &family);
    }
    out
}

/// The events families, from the daemon's readers (labels `instance`,
/// `dev`, `netns` as above; an instance gone since is left out):
/// - `flowstate_events_total`: events read from the ring buffer since
///   the daemon started (Prometheus' `rate()` gives the events rate)
/// - `flowstate_event_subscribers`: clients streaming the events
/// - `flowstate_events_dropped_total` (`subscriber`: its id): events a
///   slow subscriber lost because its queue was full
pub fn render_events(hub: &crate::events::Hub, instances: &[Instance]) -> String {
    let mut total = Family::new(
        "flowstate_events_total",
        "counter",
        "Controller events flowstated read from the instance's ring buffer.",
    );
    let mut subscribers = Family::new(
        "flowstate_event_subscribers",
        "gauge",
        "Clients streaming the instance's events.",
    );
    let mut dropped = Family::new(
        "flowstate_events_dropped_total",
        "counter",
        "Events a subscriber lost because its queue was full (it is told how many).",
    );
    for channel in hub.channels() {
        let Some(i) = instances.iter().find(|i| i.name == channel.instance()) else {
            continue;
        };
        let netns = i.netns.as_deref().unwrap_or("");
        let base = [
            ("instance", i.name.as_str()),
            ("dev", i.dev.as_str()),
            ("netns", netns),
        ];
        total.add(&base, channel.events_total());
        let all = channel.subscribers();
        subscribers.add(&base, all.len());
        for subscriber in all {
            let id = subscriber.id.to_string();
            let mut labels = base.to_vec();
            labels.push(("subscriber", id.as_str()));
            dropped.add(&labels, subscriber.dropped_total());
        }
    }
    let mut out = String::new();
    for family in [total, subscribers, dropped] {
        write_family(&mut out, &family);
    }
    out
}

fn write_family(out: &mut String, family: &Family) {
    let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
    let _ = writeln!(out, "# TYPE {} {}", family.name, family.kind);
    for (labels, value) in &family.samples {
        let _ = writeln!(out, "{}{labels} {value}", family.name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }

    #[test]
    fn an_empty_host_still_declares_every_family() {
        let text = render(&[]);
        assert!(text.contains("# TYPE flowstate_row_packets_total counter"));
        assert!(text.contains("# TYPE flowstate_flows gauge"));
        assert!(!text.lines().any(|l| !l.starts_with('#')));
    }
}
