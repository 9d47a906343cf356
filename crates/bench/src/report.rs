//! Figures, their floors, the printed table and the JSON results.

use std::fmt::Write;

use serde_json::{json, Value};

/// The bound a figure must keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Floor {
    /// Informative only.
    None,
    /// ns/packet at most this many times the baseline's.
    MaxRatio(f64),
    /// At least this many million packets per second.
    MinMpps(f64),
}

/// A figure against its floor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Over,
    /// No floor to meet.
    Info,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "OK",
            Status::Over => "OVER",
            Status::Info => "-",
        }
    }
}

/// One measured figure.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    pub name: String,
    pub ns_per_packet: f64,
    /// Name of the bare program this figure is divided by.
    pub baseline: String,
    /// Its ns/packet in the same run.
    pub baseline_ns: f64,
    pub floor: Floor,
    /// Throughput, for figures measured as a rate.
    pub mpps: Option<f64>,
    /// Instruction slots of the program, when known.
    pub insns: Option<usize>,
}

impl Figure {
    pub fn new(name: impl Into<String>, ns_per_packet: f64, baseline: &Figure) -> Figure {
        Figure {
            name: name.into(),
            ns_per_packet,
            baseline: baseline.name.clone(),
            baseline_ns: baseline.ns_per_packet,
            floor: Floor::None,
            mpps: None,
            insns: None,
        }
    }

    /// A baseline: its own ratio is 1.
    pub fn bare(name: impl Into<String>, ns_per_packet: f64) -> Figure {
        let name = name.into();
        Figure {
            baseline: name.clone(),
            name,
            ns_per_packet,
            baseline_ns: ns_per_packet,
            floor: Floor::None,
            mpps: None,
            insns: None,
        }
    }

    pub fn with_floor(mut self, floor: Floor) -> Figure {
        self.floor = floor;
        self
    }

    pub fn with_insns(mut self, insns: usize) -> Figure {
        self.insns = Some(insns);
        self
    }

    pub fn with_mpps(mut self, mpps: f64) -> Figure {
        self.mpps = Some(mpps);
        self
    }

    /// ns/packet over the baseline's; NaN when the baseline is not positive.
    pub fn ratio(&self) -> f64 {
        if self.baseline_ns > 0.0 {
            self.ns_per_packet / self.baseline_ns
        } else {
            f64::NAN
        }
    }

    pub fn status(&self) -> Status {
        match self.floor {
            Floor::None => Status::Info,
            // A NaN (no baseline, no rate) fails both comparisons: OVER.
            Floor::MaxRatio(max) if self.ratio() <= max => Status::Ok,
            Floor::MinMpps(min) if self.mpps.is_some_and(|r| r >= min) => Status::Ok,
            _ => Status::Over,
        }
    }

    fn floor_text(&self) -> String {
        match self.floor {
            Floor::None => "-".to_string(),
            Floor::MaxRatio(max) => format!("<= {max}x"),
            Floor::MinMpps(min) => format!(">= {min} Mpps"),
        }
    }

    fn measured_text(&self) -> String {
        match self.mpps {
            Some(rate) => format!("{:.1} ({rate:.2} Mpps)", self.ns_per_packet),
            None => format!("{:.1}", self.ns_per_packet),
        }
    }
}

/// Every figure of a run, and what could not be measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub figures: Vec<Figure>,
    /// `(what, why)` for each part that was skipped or failed.
    pub skipped: Vec<(String, String)>,
}

impl Report {
    pub fn push(&mut self, figure: Figure) {
        self.figures.push(figure);
    }

    pub fn skip(&mut self, what: impl Into<String>, why: impl Into<String>) {
        self.skipped.push((what.into(), why.into()));
    }

    /// Whether every figure with a floor met it.
    pub fn all_ok(&self) -> bool {
        self.figures.iter().all(|f| f.status() != Status::Over)
    }

    /// The table: name, ns/packet, ratio, baseline, floor, OK/OVER.
    pub fn table(&self) -> String {
        let headers = [
            "name",
            "ns/packet",
            "ratio",
            "vs",
            "insns",
            "floor",
            "result",
        ];
        let rows: Vec<[String; 7]> = self
            .figures
            .iter()
            .map(|f| {
                [
                    f.name.clone(),
                    f.measured_text(),
                    format!("{:.2}x", f.ratio()),
                    f.baseline.clone(),
                    f.insns.map_or("-".to_string(), |n| n.to_string()),
                    f.floor_text(),
                    f.status().as_str().to_string(),
                ]
            })
            .collect();
        let mut widths = headers.map(str::len);
        for row in &rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let line = |out: &mut String, cells: &[String]| {
            let mut text = String::new();
            for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
                // Names left-aligned, figures right-aligned.
                let padded = if i == 0 || i == 3 {
                    format!("{cell:<width$}")
                } else {
                    format!("{cell:>width$}")
                };
                if i > 0 {
                    text.push_str("  ");
                }
                text.push_str(&padded);
            }
            let _ = writeln!(out, "{}", text.trim_end());
        };
        line(&mut out, &headers.map(String::from));
        let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        let _ = writeln!(out, "{}", "-".repeat(total));
        for row in &rows {
            line(&mut out, row);
        }
        for (what, why) in &self.skipped {
            let _ = writeln!(out, "SKIPPED {what}: {why}");
        }
        out
    }

    pub fn to_json(&self) -> Value {
        let figures: Vec<Value> = self
            .figures
            .iter()
            .map(|f| {
                let floor = match f.floor {
                    Floor::None => Value::Null,
                    Floor::MaxRatio(max) => json!({ "max_ratio": max }),
                    Floor::MinMpps(min) => json!({ "min_mpps": min }),
                };
                json!({
                    "name": f.name,
                    "ns_per_packet": finite(f.ns_per_packet),
                    "baseline": f.baseline,
                    "baseline_ns": finite(f.baseline_ns),
                    "ratio": finite(f.ratio()),
                    "mpps": f.mpps.and_then(finite),
                    "insns": f.insns,
                    "floor": floor,
                    "result": f.status().as_str(),
                })
            })
            .collect();
        let skipped: Vec<Value> = self
            .skipped
            .iter()
            .map(|(what, why)| json!({ "what": what, "why": why }))
            .collect();
        json!({ "figures": figures, "skipped": skipped, "all_ok": self.all_ok() })
    }
}

/// JSON has no NaN or infinity: those become null.
fn finite(x: f64) -> Option<f64> {
    x.is_finite().then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare() -> Figure {
        Figure::bare("bare xdp", 20.0)
    }

    #[test]
    fn ratio_is_against_the_baseline_of_the_same_run() {
        let f = Figure::new("portknock", 70.0, &bare());
        assert_eq!(f.ratio(), 3.5);
        assert_eq!(f.baseline, "bare xdp");
        assert_eq!(bare().ratio(), 1.0);
    }

    #[test]
    fn ratio_floor_is_ok_up_to_and_including_the_bound() {
        let at = Figure::new("a", 80.0, &bare()).with_floor(Floor::MaxRatio(4.0));
        let over = Figure::new("b", 80.1, &bare()).with_floor(Floor::MaxRatio(4.0));
        let info = Figure::new("c", 1e6, &bare());
        assert_eq!(at.status(), Status::Ok);
        assert_eq!(over.status(), Status::Over);
        assert_eq!(info.status(), Status::Info);
    }

    #[test]
    fn rate_floor_needs_a_rate() {
        let fast = Figure::new("replay", 100.0, &bare())
            .with_mpps(10.0)
            .with_floor(Floor::MinMpps(5.0));
        let slow = fast.clone().with_mpps(4.9);
        let unknown = Figure {
            mpps: None,
            ..fast.clone()
        };
        assert_eq!(fast.status(), Status::Ok);
        assert_eq!(slow.status(), Status::Over);
        assert_eq!(unknown.status(), Status::Over);
    }

    #[test]
    fn a_zero_baseline_gives_no_ratio_and_fails_a_ratio_floor() {
        let zero = Figure::bare("zero", 0.0);
        let f = Figure::new("x", 10.0, &zero).with_floor(Floor::MaxRatio(4.0));
        assert!(f.ratio().is_nan());
        assert_eq!(f.status(), Status::Over);
        assert_eq!(f.to_json_ratio(), Value::Null);
    }

    impl Figure {
        fn to_json_ratio(&self) -> Value {
            let mut report = Report::default();
            report.push(self.clone());
            report.to_json()["figures"][0]["ratio"].clone()
        }
    }

    #[test]
    fn table_lists_every_figure_with_its_result_and_the_skipped_parts() {
        let mut report = Report::default();
        report.push(bare());
        report.push(
            Figure::new("portknock open", 90.0, &bare())
                .with_floor(Floor::MaxRatio(4.0))
                .with_insns(123),
        );
        report.skip("C baselines", "clang not found");
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("name"), "{table}");
        assert!(lines[2].starts_with("bare xdp"), "{table}");
        assert!(lines[2].ends_with('-'), "{table}");
        assert!(lines[3].contains("90.0"), "{table}");
        assert!(lines[3].contains("4.50x"), "{table}");
        assert!(lines[3].contains("123"), "{table}");
        assert!(lines[3].ends_with("OVER"), "{table}");
        assert_eq!(lines[4], "SKIPPED C baselines: clang not found");
        assert!(!report.all_ok());
    }

    #[test]
    fn json_carries_figures_floors_and_results() {
        let mut report = Report::default();
        report.push(bare());
        report.push(
            Figure::new("replay", 150.0, &bare())
                .with_mpps(6.5)
                .with_floor(Floor::MinMpps(5.0)),
        );
        let value = report.to_json();
        assert_eq!(value["all_ok"], true);
        let replay = &value["figures"][1];
        assert_eq!(replay["name"], "replay");
        assert_eq!(replay["ratio"], 7.5);
        assert_eq!(replay["mpps"], 6.5);
        assert_eq!(replay["floor"]["min_mpps"], 5.0);
        assert_eq!(replay["result"], "OK");
        assert_eq!(value["figures"][0]["floor"], Value::Null);
    }
}
