//! What the daemon's live tests share: a flowstated process on private
//! directories, a tiny HTTP/1.1 client over its Unix socket, polling.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Why the live tests cannot run here, if they cannot.
pub fn skip(test: &str) -> bool {
    let reason = flowstate_netlab::skip_reason().or_else(flowstate_runtime::kernel_unavailable);
    flowstate_testkit::skip_if(test, reason)
}

/// A name unique to this process and call: `PREFIX-PID-N`.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A scratch directory removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(unique(&format!("flowstated-{tag}-")));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A flowstated process, killed (-9) on drop. Its instances are not
/// stopped here: the tests register that with their topology.
pub struct Daemon {
    child: Option<Child>,
    pub socket: PathBuf,
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    extra_args: Vec<String>,
}

impl Daemon {
    /// Starts flowstated on `root/config`, `root/api.sock`, `root/state`
    /// and waits until it answers (after its first apply).
    pub fn start(root: &Path) -> Daemon {
        Daemon::start_with(root, &[])
    }

    /// [`Daemon::start`] with more arguments.
    pub fn start_with(root: &Path, extra_args: &[&str]) -> Daemon {
        let mut daemon = Daemon {
            child: None,
            socket: root.join("api.sock"),
            config_dir: root.join("config"),
            state_dir: root.join("state"),
            extra_args: extra_args.iter().map(|a| a.to_string()).collect(),
        };
        std::fs::create_dir_all(&daemon.config_dir).unwrap();
        daemon.spawn();
        daemon
    }

    fn spawn(&mut self) {
        let child = Command::new(env!("CARGO_BIN_EXE_flowstated"))
            .arg("--config-dir")
            .arg(&self.config_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .spawn()
            .expect("starting flowstated");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("flowstated exited at start: {status}");
            }
            if UnixStream::connect(&self.socket).is_ok() {
                let (status, _) = self.request("GET", "/v1/version", None);
                if status == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "flowstated did not start serving"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.as_ref().unwrap().id() as i32
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: kill has no memory preconditions; the pid is our child's.
        assert_eq!(unsafe { libc::kill(self.pid(), signal) }, 0);
    }

    /// kill -9, then wait for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// kill -9, then start again on the same directories (its stale
    /// socket left behind).
    pub fn kill_and_restart(&mut self) {
        self.kill();
        assert!(self.socket.exists(), "a killed daemon leaves its socket");
        self.spawn();
    }

    pub fn write_config(&self, file: &str, text: &str) {
        std::fs::write(self.config_dir.join(file), text).unwrap();
    }

    pub fn remove_config(&self, file: &str) {
        std::fs::remove_file(self.config_dir.join(file)).unwrap();
    }

    /// One request; the status and body.
    pub fn request(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        http(&self.socket, method, path, body)
    }

    /// A request whose answer must have `status`; its body as JSON.
    pub fn json(&self, method: &str, path: &str, body: Option<&str>, status: u16) -> Value {
        let (got, text) = self.request(method, path, body);
        assert_eq!(got, status, "{method} {path}: {text}");
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"))
    }

    /// `GET /v1/instances`, by name.
    pub fn instance(&self, name: &str) -> Option<Value> {
        let all = self.json("GET", "/v1/instances", None, 200);
        all.as_array()
            .unwrap()
            .iter()
            .find(|i| i["name"] == name)
            .cloned()
    }

    pub fn metrics(&self) -> String {
        let (status, text) = self.request("GET", "/metrics", None);
        assert_eq!(status, 200, "{text}");
        text
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `GET /metrics` over TCP at `addr`: status and body.
pub fn tcp_metrics(addr: &str) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting to the metrics port");
    let request = "GET /metrics HTTP/1.1\r\nHost: flowstated\r\nConnection: close\r\n\r\n";
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, body.to_string())
}

/// A free TCP port on 127.0.0.1 (free when asked; the daemon binds it
/// right after).
pub fn free_local_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// HTTP/1.1 over the Unix socket at `socket`, one request per connection.
pub fn http(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let mut stream = UnixStream::connect(socket).expect("connecting to flowstated");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: flowstated\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8(answer).expect("a UTF-8 answer");
    let (head, rest) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    (status, body)
}

fn dechunk(mut text: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = text.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        text = &rest[size + 2..];
    }
    out
}

/// Polls `check` until it gives `Some`, for at most a minute.
pub fn eventually<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = check() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The value of the sample of `family` whose labels include all of
/// `labels` (`key="value"` pairs).
pub fn sample(metrics: &str, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Percent-encodes a path segment (flow keys have spaces).
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
