//! The commands that stream or repeat through flowstated: `events` (the
//! daemon's event stream), `stats --watch` (its stats, read every
//! interval) and `repair`. The one-shot commands are in `daemon.rs`.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{bail, Context};
use flowstate_control::{RowStat, Stats};
use serde_json::Value;

use super::show;

/// `flowstate --daemon events NAME`: the daemon's stream of NAME's
/// events, printed as the direct command prints them. Lost events (this
/// reader was slower than the events) are reported on stderr.
pub fn events(
    socket: &Path,
    name: &str,
    json: bool,
    count: Option<u64>,
    timeout: Option<f64>,
    segment: impl Fn(&str) -> String,
) -> anyhow::Result<ExitCode> {
    let quiet_limit = match timeout {
        Some(t) if t.is_finite() && t > 0.0 => Some(Duration::from_secs_f64(t.min(1e6))),
        Some(_) => bail!("--timeout must be a positive number of seconds"),
        None => None,
    };
    let path = format!("/v1/instances/{}/events", segment(name));
    let mut stream = LineStream::open(socket, &path)?;
    if let Some(limit) = quiet_limit {
        // Wake up to check the limit even between the daemon's keep-alives.
        stream.set_read_timeout(limit.min(Duration::from_secs(1)))?;
    }
    let mut seen = 0u64;
    let mut last = Instant::now();
    let mut stdout = std::io::stdout();
    while count.is_none_or(|c| seen < c) {
        if quiet_limit.is_some_and(|limit| last.elapsed() >= limit) {
            break;
        }
        let line = match stream.next_line() {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) if is_timeout(&e) => continue,
            Err(e) => return Err(e).context("reading flowstated's event stream"),
        };
        if line.trim().is_empty() {
            continue; // keep-alive
        }
        let event: Value = serde_json::from_str(&line)
            .with_context(|| format!("flowstated sent a line that is not JSON: {line:?}"))?;
        if let Some(n) = event["dropped"].as_u64() {
            eprintln!(
                "flowstate: {n} event(s) lost ({} in all): this reader fell behind and the \
                 daemon's queue for it was full",
                event["dropped_total"]
            );
            continue;
        }
        if let Some(why) = event["closed"].as_str() {
            eprintln!("flowstate: the event stream ended: {why}");
            break;
        }
        seen += 1;
        last = Instant::now();
        let text = if json {
            event.to_string()
        } else {
            event_line(&event)
        };
        // A closed pipe (`| head`) ends the stream quietly.
        if writeln!(stdout, "{text}").is_err() || stdout.flush().is_err() {
            break;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn is_timeout(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

/// One event as the direct `flowstate events` prints it.
fn event_line(e: &Value) -> String {
    let received = e["received_unix"].as_f64().unwrap_or(0.0);
    let received = UNIX_EPOCH + Duration::from_secs_f64(received.max(0.0));
    let row = e["row_line"]
        .as_u64()
        .map_or("default".to_string(), |l| format!("line {l}"));
    let key = e["key"].as_str().filter(|k| !k.is_empty()).unwrap_or("-");
    format!(
        "{}  {:<20} {:<10} {:<9} {:>5}B  {}",
        show::clock_time(received),
        key,
        e["state"].as_str().unwrap_or("-"),
        row,
        e["pkt_len"],
        e["summary"].as_str().unwrap_or("")
    )
}

/// `flowstate --daemon stats NAME --watch`: the daemon's stats every
/// interval, redrawn with the rates between two readings.
pub fn stats_watch(
    name: &str,
    interval: Duration,
    read: impl Fn() -> anyhow::Result<Value>,
) -> anyhow::Result<ExitCode> {
    let mut before = stats_of(&read()?)?;
    loop {
        std::thread::sleep(interval);
        let now = stats_of(&read()?)?;
        let text = show::stats_text(name, &before, &now);
        print!("\x1b[2J\x1b[H{text}");
        if std::io::stdout().flush().is_err() {
            return Ok(ExitCode::SUCCESS);
        }
        before = now;
    }
}

/// The daemon's `GET .../stats` answer as the control crate's [`Stats`],
/// taken now.
fn stats_of(v: &Value) -> anyhow::Result<Stats> {
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    let Some(rows) = v["rows"].as_array() else {
        bail!("flowstated's stats have no rows: {v}");
    };
    Ok(Stats {
        taken: Instant::now(),
        rows: rows
            .iter()
            .map(|r| RowStat {
                line: n(&r["line"]) as u32,
                text: r["text"].as_str().unwrap_or("").to_string(),
                packets: n(&r["packets"]),
                bytes: n(&r["bytes"]),
            })
            .collect(),
        default: (n(&v["default"]["packets"]), n(&v["default"]["bytes"])),
        contention: n(&v["contention"]),
        table_full: n(&v["table_full"]),
        flows_by_state: v["flows_by_state"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| {
                (
                    s["state"].as_str().unwrap_or("?").to_string(),
                    n(&s["flows"]) as usize,
                )
            })
            .collect(),
    })
}

/// `flowstate --daemon repair [NAME]`: the daemon's repairs, one line each.
pub fn print_repaired(answer: &Value) {
    let repaired = answer["repaired"].as_array().cloned().unwrap_or_default();
    if repaired.is_empty() {
        println!("nothing to repair");
    }
    for r in repaired {
        println!("{}", r["message"].as_str().unwrap_or_default());
    }
}

/// A streamed (chunked) HTTP answer over the Unix socket, line by line.
struct LineStream {
    reader: BufReader<UnixStream>,
    /// Bytes left in the current chunk.
    chunk_left: usize,
    /// Received bytes not yet returned as a line.
    pending: Vec<u8>,
    chunked: bool,
}

impl LineStream {
    /// Sends `GET path`; an error status is the daemon's error message.
    fn open(socket: &Path, path: &str) -> anyhow::Result<LineStream> {
        let mut stream = UnixStream::connect(socket).with_context(|| {
            format!(
                "cannot reach flowstated at {} (is it running? `systemctl status flowstated`); \
                 without --daemon and FLOWSTATE_DAEMON the command runs on its own",
                socket.display()
            )
        })?;
        stream.set_read_timeout(Some(Duration::from_secs(300)))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: flowstated\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes())?;
        let mut reader = BufReader::new(stream);
        let mut head = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
                break;
            }
            head.push_str(&line);
        }
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let chunked = head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked");
        let mut stream = LineStream {
            reader,
            chunk_left: 0,
            pending: Vec::new(),
            chunked,
        };
        if !(200..300).contains(&status) {
            let mut text = String::new();
            while let Ok(Some(line)) = stream.next_line() {
                text.push_str(&line);
            }
            let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            bail!("{}", value["error"].as_str().unwrap_or(&text));
        }
        Ok(stream)
    }

    fn set_read_timeout(&self, timeout: Duration) -> std::io::Result<()> {
        self.reader.get_ref().set_read_timeout(Some(timeout))
    }

    /// The next line (without its `\n`); `None` at the end.
    fn next_line(&mut self) -> std::io::Result<Option<String>> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(Some(String::from_utf8_lossy(&line[..end]).into_owned()));
            }
            if self.chunked && self.chunk_left == 0 {
                let mut size = String::new();
                if self.reader.read_line(&mut size)? == 0 {
                    return Ok(self.rest());
                }
                if size.trim().is_empty() {
                    continue; // the CRLF after a chunk
                }
                self.chunk_left = usize::from_str_radix(size.trim(), 16).map_err(|_| {
                    std::io::Error::other(format!("a bad chunk size from flowstated: {size:?}"))
                })?;
                if self.chunk_left == 0 {
                    return Ok(self.rest());
                }
            }
            let want = if self.chunked {
                self.chunk_left
            } else {
                64 * 1024
            };
            let mut buf = vec![0; want.min(64 * 1024)];
            let n = self.reader.read(&mut buf)?;
            if n == 0 {
                return Ok(self.rest());
            }
            if self.chunked {
                self.chunk_left -= n;
            }
            self.pending.extend_from_slice(&buf[..n]);
        }
    }

    /// What is left after the end of the stream, as a last line.
    fn rest(&mut self) -> Option<String> {
        if self.pending.is_empty() {
            return None;
        }
        let rest = std::mem::take(&mut self.pending);
        Some(String::from_utf8_lossy(&rest).into_owned())
    }
}

/// Whether the daemon at the default place records owning `name`: then
/// reading its events here would take them from the daemon.
pub fn daemon_owns(name: &str) -> bool {
    let path = Path::new("/run/flowstate/daemon/owned.json");
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    serde_json::from_str::<Value>(&text)
        .ok()
        .is_some_and(|v| v["instances"].get(name).is_some())
}
