//! Text and JSON renderings of the control plane's data.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use flowstate_control::{Event, FlowRow, Instance, Stats};
use serde_json::{json, Value};

/// Left-aligned columns, two spaces apart.
pub fn columns(rows: &[Vec<String>]) -> String {
    let width = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..width)
        .map(|c| {
            rows.iter()
                .map(|r| r.get(c).map_or(0, |s| s.chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(c, s)| format!("{s:<w$}", w = widths[c]))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `2h03m`, `4m12s`, `3.2s`, `15ms`.
pub fn duration(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else if s >= 1 {
        format!("{:.1}s", d.as_secs_f64())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// `HH:MM:SS.mmm` (UTC) of a wall-clock time.
pub fn clock_time(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3600,
        s % 3600 / 60,
        s % 60,
        d.subsec_millis()
    )
}

pub fn duration_opt(ns: Option<u64>) -> String {
    ns.map_or("-".to_string(), |n| duration(Duration::from_nanos(n)))
}

pub fn instance_json(i: &Instance) -> Value {
    json!({
        "name": i.name,
        "dev": i.dev,
        "ifindex": i.ifindex,
        "hook": i.attach.hook_name(),
        "mode": i.mode,
        "prog_id": i.prog_id,
        "started_unix": i.started.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        "uptime_s": i.started.elapsed().map_or(0.0, |d| d.as_secs_f64()),
        "source_path": i.source_path.display().to_string(),
        "source_hash": i.source_hash,
        "flows": i.flows,
        "reloads": i.reloads,
        "problem": i.problem,
        "netns": i.netns,
        "note": i.note,
        "hook_programs": i.hook_programs.iter().map(|p| json!({
            "prog_id": p.prog_id,
            "name": p.name,
            "this": p.prog_id == i.prog_id,
        })).collect::<Vec<_>>(),
    })
}

/// Where a TC instance is on its hook, e.g. `2/3`; `-` for XDP or when
/// unknown.
pub fn hook_position(i: &Instance) -> String {
    match i.hook_programs.iter().position(|p| p.prog_id == i.prog_id) {
        Some(at) => format!("{}/{}", at + 1, i.hook_programs.len()),
        None => "-".to_string(),
    }
}

/// The programs on a TC instance's hook in run order, this one marked:
/// `12 cilium_ingress, *40 portknock`.
pub fn hook_chain(i: &Instance) -> String {
    i.hook_programs
        .iter()
        .map(|p| {
            let mark = if p.prog_id == i.prog_id { "*" } else { "" };
            format!("{mark}{} {}", p.prog_id, p.name)
        })
        .collect::<Vec<_>>()
        .join(", ")
}

pub fn row_json(r: &FlowRow) -> Value {
    let registers: serde_json::Map<String, Value> = r
        .registers
        .iter()
        .map(|(n, v)| (n.clone(), json!(v)))
        .collect();
    json!({
        "key": r.key,
        "state": r.state,
        "expired_to": r.expired_to,
        "registers": registers,
        "age_ns": r.age_ns,
        "idle_ns": r.idle_ns,
    })
}

pub fn event_json(e: &Event) -> Value {
    let head: String = e.head.iter().map(|b| format!("{b:02x}")).collect();
    json!({
        "time_ns": e.time_ns,
        "received_unix": e.received.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        "key": e.key,
        "state": e.state,
        "row_line": e.row_line,
        "pkt_len": e.pkt_len,
        "summary": e.summary,
        "head_hex": head,
    })
}

/// Per-second rate of a counter between two readings.
fn rate(before: u64, after: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        after.saturating_sub(before) as f64 / seconds
    } else {
        0.0
    }
}

fn seconds(before: &Stats, now: &Stats) -> f64 {
    now.taken.duration_since(before.taken).as_secs_f64()
}

pub fn stats_json(before: &Stats, now: &Stats) -> Value {
    let secs = seconds(before, now);
    let rows: Vec<Value> = now
        .rows
        .iter()
        .zip(&before.rows)
        .map(|(r, b)| {
            json!({
                "line": r.line,
                "row": r.text,
                "packets": r.packets,
                "bytes": r.bytes,
                "pps": rate(b.packets, r.packets, secs),
                "bps": 8.0 * rate(b.bytes, r.bytes, secs),
            })
        })
        .collect();
    let states: serde_json::Map<String, Value> = now
        .flows_by_state
        .iter()
        .map(|(s, n)| (s.clone(), json!(n)))
        .collect();
    json!({
        "rows": rows,
        "default": {
            "packets": now.default.0,
            "bytes": now.default.1,
            "pps": rate(before.default.0, now.default.0, secs),
        },
        "contention": now.contention,
        "table_full": now.table_full,
        "flows_by_state": states,
    })
}

/// Human numbers: 950, 12.3k, 4.56M.
fn human(x: f64) -> String {
    if x >= 1e9 {
        format!("{:.2}G", x / 1e9)
    } else if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e4 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

pub fn stats_text(name: &str, before: &Stats, now: &Stats) -> String {
    let secs = seconds(before, now);
    let mut table = vec![vec![
        "LINE".to_string(),
        "PACKETS".to_string(),
        "BYTES".to_string(),
        "PKT/S".to_string(),
        "BIT/S".to_string(),
        "ROW".to_string(),
    ]];
    for (r, b) in now.rows.iter().zip(&before.rows) {
        table.push(vec![
            r.line.to_string(),
            r.packets.to_string(),
            r.bytes.to_string(),
            human(rate(b.packets, r.packets, secs)),
            human(8.0 * rate(b.bytes, r.bytes, secs)),
            r.text.clone(),
        ]);
    }
    table.push(vec![
        "-".to_string(),
        now.default.0.to_string(),
        now.default.1.to_string(),
        human(rate(before.default.0, now.default.0, secs)),
        human(8.0 * rate(before.default.1, now.default.1, secs)),
        "default (no row matched, or no flow key)".to_string(),
    ]);
    let states: Vec<String> = now
        .flows_by_state
        .iter()
        .map(|(s, n)| format!("{s} {n}"))
        .collect();
    let total: usize = now.flows_by_state.iter().map(|(_, n)| n).sum();
    format!(
        "{name}: rates over {:.1}s\n{}flows: {total} ({})\nlock contention: {} packet(s), \
         new flows refused by a full table: {}\n",
        secs,
        columns(&table),
        states.join(", "),
        now.contention,
        now.table_full
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_trim() {
        let t = columns(&[
            vec!["A".into(), "BB".into()],
            vec!["CCC".into(), "D".into()],
        ]);
        assert_eq!(t, "A    BB\nCCC  D\n");
    }

    #[test]
    fn durations_and_numbers_read_naturally() {
        assert_eq!(duration(Duration::from_millis(15)), "15ms");
        assert_eq!(duration(Duration::from_millis(3200)), "3.2s");
        assert_eq!(duration(Duration::from_secs(252)), "4m12s");
        assert_eq!(duration(Duration::from_secs(7380)), "2h03m");
        assert_eq!(duration_opt(None), "-");
        let t = UNIX_EPOCH + Duration::from_millis(86_400_000 + 3_723_004);
        assert_eq!(clock_time(t), "01:02:03.004");
        assert_eq!(human(950.0), "950");
        assert_eq!(human(12_345.0), "12.3k");
        assert_eq!(human(4_560_000.0), "4.56M");
        assert_eq!(rate(10, 30, 2.0), 10.0);
        assert_eq!(
            rate(30, 10, 2.0),
            0.0,
            "a counter reset is no negative rate"
        );
    }
}
