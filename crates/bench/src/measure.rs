//! Kernel-reported durations: medians of `BPF_PROG_TEST_RUN` runs.

use flowstate_runtime::{Loaded, RuntimeError};

/// The median of `values` (the mean of the middle two for an even count);
/// `None` when empty. NaNs sort last.
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    })
}

/// The arithmetic mean of `values`; `None` when empty.
pub fn mean(values: &[f64]) -> Option<f64> {
    (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
}

/// The outcome of [`repeated`]: the verdict and the per-run figures.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The program's return value (the same on every run, or an error).
    pub retval: u32,
    /// Kernel-reported mean nanoseconds per repetition, one per run.
    pub runs_ns: Vec<f64>,
}

impl Sample {
    pub fn median_ns(&self) -> f64 {
        median(&self.runs_ns).unwrap_or(f64::NAN)
    }
}

/// Why a measurement is not valid.
#[derive(Debug)]
pub enum MeasureError {
    Runtime(RuntimeError),
    /// The program gave another verdict than the path meant to be measured.
    Verdict {
        program: String,
        expected: u32,
        got: u32,
    },
}

impl std::fmt::Display for MeasureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MeasureError::Runtime(e) => e.fmt(f),
            MeasureError::Verdict {
                program,
                expected,
                got,
            } => write!(
                f,
                "{program} returned {got}, expected {expected}: not the path meant to be measured"
            ),
        }
    }
}

impl std::error::Error for MeasureError {}

impl From<RuntimeError> for MeasureError {
    fn from(e: RuntimeError) -> Self {
        MeasureError::Runtime(e)
    }
}

/// Checks a verdict against the one the measured path must give.
pub fn expect_verdict(program: &str, expected: u32, got: u32) -> Result<(), MeasureError> {
    if expected == got {
        Ok(())
    } else {
        Err(MeasureError::Verdict {
            program: program.to_string(),
            expected,
            got,
        })
    }
}

/// `runs` test runs of `packet` with `repeat` repetitions each; every run
/// must return `expected`.
pub fn repeated(
    loaded: &Loaded,
    program: &str,
    packet: &[u8],
    repeat: u32,
    runs: usize,
    expected: u32,
) -> Result<Sample, MeasureError> {
    let mut runs_ns = Vec::with_capacity(runs);
    for _ in 0..runs.max(1) {
        let result = loaded.test_run(program, packet, repeat)?;
        expect_verdict(program, expected, result.retval)?;
        runs_ns.push(f64::from(result.duration_ns));
    }
    Ok(Sample {
        retval: expected,
        runs_ns,
    })
}

/// One test run with `repeat = 1` per packet; the mean of the
/// kernel-reported durations. Each packet must return `expected`.
pub fn single_runs(
    loaded: &Loaded,
    program: &str,
    packets: impl IntoIterator<Item = Vec<u8>>,
    expected: u32,
) -> Result<f64, MeasureError> {
    let mut durations = Vec::new();
    for packet in packets {
        let result = loaded.test_run(program, &packet, 1)?;
        expect_verdict(program, expected, result.retval)?;
        durations.push(f64::from(result.duration_ns));
    }
    Ok(mean(&durations).unwrap_or(f64::NAN))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.0]), Some(7.0));
        assert_eq!(median(&[]), None);
    }

    #[test]
    fn median_ignores_one_outlier() {
        assert_eq!(median(&[20.0, 21.0, 22.0, 23.0, 5000.0]), Some(22.0));
    }

    #[test]
    fn mean_of_values() {
        assert_eq!(mean(&[1.0, 2.0, 6.0]), Some(3.0));
        assert_eq!(mean(&[]), None);
    }

    #[test]
    fn a_wrong_verdict_is_an_error_naming_the_program() {
        assert!(expect_verdict("p", 2, 2).is_ok());
        let err = expect_verdict("portknock", 2, 1).unwrap_err();
        assert_eq!(
            err.to_string(),
            "portknock returned 1, expected 2: not the path meant to be measured"
        );
    }
}
