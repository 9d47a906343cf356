//! Real sockets inside namespaces: a TCP server and a UDP sink that count
//! what reaches them, and the client side (connect, UDP socket).

use std::io;
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::{NetlabError, Netns, Result};

/// How often the server threads look at their stop flag.
const POLL: Duration = Duration::from_millis(5);

impl Netns {
    /// Connects over TCP from inside the namespace, giving up after
    /// `timeout`. The outer error is about the namespace; the inner result
    /// is what the network did (connected, timed out, refused).
    pub fn tcp_connect(
        &self,
        to: SocketAddrV4,
        timeout: Duration,
    ) -> Result<io::Result<TcpStream>> {
        self.run_in(|| TcpStream::connect_timeout(&SocketAddr::V4(to), timeout))
    }

    /// A UDP socket bound inside the namespace (`0.0.0.0:0` for any).
    pub fn udp_socket(&self, bind: SocketAddrV4) -> Result<UdpSocket> {
        self.run_in(|| UdpSocket::bind(bind))?
            .map_err(|e| NetlabError::io(format!("binding UDP {bind} in {}", self.name()), e))
    }

    /// A TCP listener bound inside the namespace.
    pub fn tcp_listener(&self, bind: SocketAddrV4) -> Result<TcpListener> {
        self.run_in(|| TcpListener::bind(bind))?
            .map_err(|e| NetlabError::io(format!("binding TCP {bind} in {}", self.name()), e))
    }
}

/// Sends `count` datagrams of `payload` from `socket` to `to`, as fast as
/// the socket takes them. Returns how many the kernel accepted.
pub fn send_udp(socket: &UdpSocket, to: SocketAddrV4, payload: &[u8], count: usize) -> usize {
    (0..count)
        .filter(|_| socket.send_to(payload, to).is_ok())
        .count()
}

/// A background thread that stops and is joined on drop.
struct Worker {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Worker {
    fn start(name: &str, body: impl FnOnce(Arc<AtomicBool>) + Send + 'static) -> Result<Worker> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || body(flag))
            .map_err(|e| NetlabError::io("spawning a thread", e))?;
        Ok(Worker {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A TCP server in a namespace that accepts connections and closes them,
/// counting them. Stops on drop.
pub struct TcpServer {
    addr: SocketAddrV4,
    accepted: Arc<AtomicU64>,
    _worker: Worker,
}

impl TcpServer {
    pub fn start(netns: &Netns, addr: SocketAddrV4) -> Result<TcpServer> {
        let listener = netns.tcp_listener(addr)?;
        listener
            .set_nonblocking(true)
            .map_err(|e| NetlabError::io("making the listener non-blocking", e))?;
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let worker = Worker::start("tcp-server", move |stop| {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    // Closing at once is enough: the client saw the
                    // handshake complete, which is what is observed.
                    Ok((_stream, _peer)) => {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => std::thread::sleep(POLL),
                }
            }
        })?;
        Ok(TcpServer {
            addr,
            accepted,
            _worker: worker,
        })
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// A UDP socket in a namespace that counts the datagrams reaching it.
/// Stops on drop.
pub struct UdpSink {
    addr: SocketAddrV4,
    received: Arc<AtomicU64>,
    _worker: Worker,
}

impl UdpSink {
    pub fn start(netns: &Netns, addr: SocketAddrV4) -> Result<UdpSink> {
        let socket = netns.udp_socket(addr)?;
        socket
            .set_read_timeout(Some(POLL))
            .map_err(|e| NetlabError::io("setting a read timeout", e))?;
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        let worker = Worker::start("udp-sink", move |stop| {
            let mut buffer = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if socket.recv_from(&mut buffer).is_ok() {
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        })?;
        Ok(UdpSink {
            addr,
            received,
            _worker: worker,
        })
    }

    pub fn addr(&self) -> SocketAddrV4 {
        self.addr
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until nothing new arrived for `quiet` (or `limit` passed), so
    /// datagrams still in flight are counted; returns the count.
    pub fn settle(&self, quiet: Duration, limit: Duration) -> u64 {
        let start = Instant::now();
        let mut last = self.received();
        let mut last_change = Instant::now();
        while start.elapsed() < limit {
            std::thread::sleep(POLL);
            let now = self.received();
            if now != last {
                last = now;
                last_change = Instant::now();
            } else if last_change.elapsed() >= quiet {
                break;
            }
        }
        last
    }
}
