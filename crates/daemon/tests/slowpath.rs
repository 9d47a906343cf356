//! The slow path through flowstated, on veths in test network namespaces:
//! the daemon as the single reader of `controller` events fanned out to
//! subscribers (every subscriber gets every event; a slow one loses only
//! its own, and is told how many), packet-out of a raw frame, and the
//! example controller (examples/controller) reacting to packet-in.
//!
//! Each test has its own namespaces (netlab), instance names and daemon
//! directories; instances are stopped at cleanup even when a test fails.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::{eventually, sample, unique, Daemon, Scratch};
use flowstate_netlab::{Netns, Topology};
use serde_json::Value;

const SENDER_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const RECEIVER_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const PORT: u16 = 6666;

struct Lab {
    topology: Topology,
    sender: Netns,
    receiver: Netns,
}

/// Sender `sa` (SENDER_IP) and receiver `rb` (RECEIVER_IP) on one veth.
fn lab(tag: &str) -> Lab {
    let mut topology = Topology::new(tag).unwrap();
    let sender = topology.add_netns("a").unwrap();
    let receiver = topology.add_netns("b").unwrap();
    topology
        .link(&sender, "sa", SENDER_IP, &receiver, "rb", RECEIVER_IP, 24)
        .unwrap();
    Lab {
        topology,
        sender,
        receiver,
    }
}

impl Lab {
    fn stop_at_cleanup(&mut self, name: &str) {
        let name = name.to_string();
        self.topology.on_cleanup(format!("stop {name}"), move || {
            let _ = flowstate_control::stop(&name);
        });
    }

    /// Sends `count` datagrams of `payload` bytes to RECEIVER_IP:PORT,
    /// after one to another port so that the neighbour is resolved.
    fn send(&self, count: usize, payload: usize) {
        let socket = self
            .sender
            .udp_socket(SocketAddrV4::new(SENDER_IP, 0))
            .unwrap();
        socket
            .send_to(&[0; 8], SocketAddrV4::new(RECEIVER_IP, PORT + 1))
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        let to = SocketAddrV4::new(RECEIVER_IP, PORT);
        let data = vec![0x5a; payload];
        for _ in 0..count {
            socket.send_to(&data, to).unwrap();
            // Paced: a burst could overflow the veth's queue.
            std::thread::sleep(Duration::from_micros(500));
        }
    }
}

/// Every UDP datagram to PORT goes to the controller (and is dropped).
fn asking_program(name: &str) -> String {
    format!(
        "program {name}\nhook xdp\nflow ip.src\nstates S\ndefault pass\ntable\n  \
         S udp.dport == {PORT} => controller then drop\nend\n"
    )
}

/// The line of the controller row in [`asking_program`].
const ASK_ROW_LINE: &str = "7";

fn instance_config(name: &str, program: &Path, dev: &str, netns: &Netns) -> String {
    format!(
        "[[instance]]\nname = \"{name}\"\nprogram = \"{}\"\ndev = \"{dev}\"\nnetns = \"{}\"\n",
        program.display(),
        netns.name()
    )
}

/// A client of `GET /v1/instances/{name}/events`: its lines as JSON
/// (keep-alive empty lines skipped).
struct EventStream {
    reader: BufReader<UnixStream>,
    chunk_left: usize,
    pending: Vec<u8>,
}

impl EventStream {
    fn open(socket: &Path, path: &str) -> EventStream {
        let mut stream = UnixStream::connect(socket).expect("connecting to flowstated");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: flowstated\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        let mut head = String::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            if line.trim().is_empty() {
                break;
            }
            head.push_str(&line);
        }
        assert!(status.contains(" 200 "), "{status} {head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{head}"
        );
        EventStream {
            reader,
            chunk_left: 0,
            pending: Vec::new(),
        }
    }

    /// The next JSON line; `None` at the end of the stream.
    fn next(&mut self) -> Option<Value> {
        loop {
            if let Some(end) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = String::from_utf8(line).unwrap();
                if text.trim().is_empty() {
                    continue;
                }
                return Some(serde_json::from_str(&text).unwrap());
            }
            if self.chunk_left == 0 {
                let mut size = String::new();
                if self.reader.read_line(&mut size).unwrap() == 0 {
                    return None;
                }
                if size.trim().is_empty() {
                    continue; // the CRLF after a chunk
                }
                self.chunk_left = usize::from_str_radix(size.trim(), 16).unwrap();
                if self.chunk_left == 0 {
                    return None;
                }
            }
            let mut buf = vec![0; self.chunk_left.min(64 * 1024)];
            let n = self.reader.read(&mut buf).unwrap();
            assert!(n > 0, "the stream ended inside a chunk");
            self.chunk_left -= n;
            self.pending.extend_from_slice(&buf[..n]);
        }
    }
}

#[test]
fn every_subscriber_gets_every_event_and_a_slow_one_loses_only_its_own() {
    const TEST: &str = "every_subscriber_gets_every_event";
    if common::skip(TEST) {
        return;
    }
    let mut lab = lab("dev");
    let scratch = Scratch::new("ev");
    let name = unique("de");
    lab.stop_at_cleanup(&name);
    let program = scratch.0.join("ask.fsm");
    std::fs::write(&program, asking_program("ask")).unwrap();
    let root = scratch.0.join("d");
    std::fs::create_dir_all(root.join("config")).unwrap();
    std::fs::write(
        root.join("config").join("ask.toml"),
        instance_config(&name, &program, "rb", &lab.receiver),
    )
    .unwrap();
    let daemon = Daemon::start(&root);
    assert!(daemon.instance(&name).is_some());

    let path = format!("/v1/instances/{name}/events");
    let fast: Vec<EventStream> = (0..2)
        .map(|_| EventStream::open(&daemon.socket, &format!("{path}?buffer=65536")))
        .collect();
    // Never read until the traffic is over: its queue of 8 overflows.
    let mut slow = EventStream::open(&daemon.socket, &format!("{path}?buffer=8"));
    let labels = [("instance", name.as_str())];
    eventually("three subscribers", || {
        (sample(&daemon.metrics(), "flowstate_event_subscribers", &labels) == Some(3.0))
            .then_some(())
    });

    // Enough events to fill the slow client's socket and the server's
    // buffers many times over (each line carries a 128-byte head as hex).
    const SENT: usize = 3000;
    let readers: Vec<_> = fast
        .into_iter()
        .map(|mut stream| {
            std::thread::spawn(move || {
                let mut seqs = Vec::new();
                let mut notices = Vec::new();
                while seqs.len() < SENT {
                    let Some(line) = stream.next() else { break };
                    match line["seq"].as_u64() {
                        Some(seq) => {
                            assert_eq!(line["row_line"], 7, "{line}");
                            assert_eq!(line["key"], SENDER_IP.to_string(), "{line}");
                            seqs.push(seq);
                        }
                        None => notices.push(line),
                    }
                }
                (seqs, notices)
            })
        })
        .collect();
    lab.send(SENT, 200);

    let row = [("instance", name.as_str()), ("row", ASK_ROW_LINE)];
    let asked = eventually("the controller row's packets", || {
        sample(&daemon.metrics(), "flowstate_row_packets_total", &row).filter(|&n| n >= SENT as f64)
    });
    assert_eq!(asked, SENT as f64, "every datagram hits the controller row");
    for reader in readers {
        let (seqs, notices) = reader.join().unwrap();
        assert!(
            notices.is_empty(),
            "a fast subscriber was told of drops: {notices:?}"
        );
        let expected: Vec<u64> = (1..=SENT as u64).collect();
        assert_eq!(
            seqs.len(),
            SENT,
            "a fast subscriber got {} events",
            seqs.len()
        );
        assert_eq!(seqs, expected, "events out of order or repeated");
    }
    let text = daemon.metrics();
    assert_eq!(
        sample(&text, "flowstate_events_total", &labels),
        Some(SENT as f64),
        "{text}"
    );

    // The slow one: what it got and what it was told it lost add up.
    let mut got = 0u64;
    let mut dropped = 0u64;
    let mut last_seq = 0u64;
    let deadline = Instant::now() + Duration::from_secs(60);
    while got + dropped < SENT as u64 {
        assert!(
            Instant::now() < deadline,
            "slow: got {got}, dropped {dropped}"
        );
        let line = slow.next().expect("the stream goes on");
        if let Some(seq) = line["seq"].as_u64() {
            assert!(seq > last_seq, "out of order: {seq} after {last_seq}");
            last_seq = seq;
            got += 1;
        } else {
            dropped += line["dropped"].as_u64().expect("a drop notice");
        }
    }
    assert_eq!(got + dropped, SENT as u64);
    assert!(dropped > 0, "the slow subscriber lost nothing (got {got})");
    assert_eq!(last_seq, SENT as u64, "the newest events are kept");
    let text = daemon.metrics();
    let dropped_metric: f64 = text
        .lines()
        .filter(|l| l.starts_with("flowstate_events_dropped_total{") && l.contains(&name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(dropped_metric, dropped as f64, "{text}");

    // A stopped instance ends its subscribers' streams, saying why.
    flowstate_control::stop(&name).unwrap();
    let closing = eventually("the closing line", || {
        slow.next().filter(|l| l.get("closed").is_some())
    });
    assert!(
        closing["closed"].as_str().unwrap().contains("not running"),
        "{closing}"
    );
}

/// A frame: broadcast destination, EtherType 0x88b5 (local experimental),
/// and `marker` as payload (padded to the 60-byte minimum).
fn marked_frame(marker: &[u8]) -> Vec<u8> {
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    frame.extend_from_slice(&[0x88, 0xb5]);
    frame.extend_from_slice(marker);
    frame.resize(frame.len().max(60), 0);
    frame
}

/// An AF_PACKET socket receiving every frame that arrives on `dev`.
fn capture(netns: &Netns, dev: &str) -> std::os::fd::OwnedFd {
    use std::os::fd::FromRawFd;
    let ifindex = netns.ifindex(dev).unwrap();
    netns
        .run_in(move || {
            let protocol = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket calls on a descriptor owned right after.
            unsafe {
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, protocol as i32);
                assert!(fd >= 0, "{}", std::io::Error::last_os_error());
                let fd = std::os::fd::OwnedFd::from_raw_fd(fd);
                let mut addr: libc::sockaddr_ll = std::mem::zeroed();
                addr.sll_family = libc::AF_PACKET as u16;
                addr.sll_protocol = protocol;
                addr.sll_ifindex = ifindex as i32;
                let bound = libc::bind(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    (&addr as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                );
                assert_eq!(bound, 0, "{}", std::io::Error::last_os_error());
                let timeout = libc::timeval {
                    tv_sec: 0,
                    tv_usec: 200_000,
                };
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&fd),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&timeout as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
                fd
            }
        })
        .unwrap()
}

/// Waits (at most 10 s) for a frame containing `marker` on `fd`.
fn captured(fd: &std::os::fd::OwnedFd, marker: &[u8]) -> Option<Vec<u8>> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = vec![0u8; 2048];
    while Instant::now() < deadline {
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
            )
        };
        if n > 0 {
            let frame = &buf[..n as usize];
            if frame.windows(marker.len()).any(|w| w == marker) {
                return Some(frame.to_vec());
            }
        }
    }
    None
}

#[test]
fn packet_out_sends_the_frame_out_of_the_interface_in_its_namespace() {
    const TEST: &str = "packet_out_sends_the_frame";
    if common::skip(TEST) {
        return;
    }
    let lab = lab("dpo");
    let scratch = Scratch::new("po");
    let daemon = Daemon::start(&scratch.0.join("d"));
    let on_peer = capture(&lab.receiver, "rb");

    let marker = format!("packet-out {}", unique("m"));
    let frame = marked_frame(marker.as_bytes());
    let hex: String = frame.iter().map(|b| format!("{b:02x}")).collect();
    let body = format!(
        r#"{{"dev":"sa","netns":"{}","frame_hex":"{hex}"}}"#,
        lab.sender.name()
    );
    let sent = daemon.json("POST", "/v1/packet-out", Some(&body), 200);
    assert_eq!(sent["bytes"], frame.len(), "{sent}");
    assert_eq!(sent["ifindex"], lab.sender.ifindex("sa").unwrap(), "{sent}");
    let arrived = captured(&on_peer, marker.as_bytes()).expect("the frame arrives on the peer");
    assert_eq!(arrived, frame, "the frame arrives as sent");

    // The same as base64 (two bytes changed so it is a new frame).
    let marker2 = format!("base64 {}", unique("m"));
    let frame2 = marked_frame(marker2.as_bytes());
    let b64 = base64(&frame2);
    let body = format!(
        r#"{{"dev":"sa","netns":"{}","frame_base64":"{b64}"}}"#,
        lab.sender.name()
    );
    daemon.json("POST", "/v1/packet-out", Some(&body), 200);
    assert_eq!(captured(&on_peer, marker2.as_bytes()), Some(frame2));

    // Refusals say what is wrong.
    let netns = lab.sender.name();
    for (body, status, says) in [
        (
            format!(r#"{{"dev":"nosuchdev0","netns":"{netns}","frame_hex":"{hex}"}}"#),
            404,
            "no interface nosuchdev0",
        ),
        (
            format!(
                r#"{{"dev":"sa","netns":"no-such-ns-{}","frame_hex":"{hex}"}}"#,
                std::process::id()
            ),
            404,
            "no network namespace",
        ),
        (
            format!(r#"{{"dev":"sa","netns":"{netns}","frame_hex":"0011"}}"#),
            400,
            "an Ethernet frame has 14",
        ),
        (
            format!(r#"{{"dev":"sa","netns":"{netns}"}}"#),
            400,
            "frame_hex",
        ),
    ] {
        let (code, answer) = daemon.request("POST", "/v1/packet-out", Some(&body));
        assert_eq!(code, status, "{body}: {answer}");
        assert!(answer.contains(says), "{body}: {answer}");
    }
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut acc = [0u8; 3];
        acc[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from_be_bytes([0, acc[0], acc[1], acc[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The example controller, killed on drop.
struct Controller(std::process::Child);

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Packets counted for the row whose text starts with `state` (the
/// instance's stats through the API).
fn row_packets(daemon: &Daemon, name: &str, state: &str) -> u64 {
    let stats = daemon.json("GET", &format!("/v1/instances/{name}/stats"), None, 200);
    stats["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["text"].as_str().unwrap().trim_start().starts_with(state))
        .unwrap_or_else(|| panic!("no {state} row in {stats}"))["packets"]
        .as_u64()
        .unwrap()
}

#[test]
fn the_example_controller_admits_a_flow_releases_its_packet_and_the_rest_take_the_fast_path() {
    const TEST: &str = "the_example_controller_admits_a_flow";
    if common::skip(TEST) {
        return;
    }
    let mut lab = lab("dctl");
    let scratch = Scratch::new("ctl");
    let name = unique("dadm");
    lab.stop_at_cleanup(&name);
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/controller");
    let program = examples.join("admit.fsm").canonicalize().unwrap();
    let root = scratch.0.join("d");
    std::fs::create_dir_all(root.join("config")).unwrap();
    // On the sender's own interface, at TC egress (the program's hook).
    std::fs::write(
        root.join("config").join("admit.toml"),
        instance_config(&name, &program, "sa", &lab.sender),
    )
    .unwrap();
    let daemon = Daemon::start(&root);
    assert_eq!(daemon.instance(&name).unwrap()["hook"], "tc-egress");
    let sink =
        flowstate_netlab::UdpSink::start(&lab.receiver, SocketAddrV4::new(RECEIVER_IP, PORT))
            .unwrap();

    let controller = std::process::Command::new("python3")
        .arg(examples.join("admit.py"))
        .args(["--socket", daemon.socket.to_str().unwrap()])
        .args(["--instance", &name, "--allow-port", &PORT.to_string()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the example controller");
    let mut controller = Controller(controller);
    let mut said = BufReader::new(controller.0.stdout.take().unwrap());
    let mut line = String::new();
    said.read_line(&mut line).unwrap();
    assert!(line.starts_with("controlling"), "{line}");
    let labels = [("instance", name.as_str())];
    eventually("the controller's subscription", || {
        (sample(&daemon.metrics(), "flowstate_event_subscribers", &labels) == Some(1.0))
            .then_some(())
    });

    let socket = lab
        .sender
        .udp_socket(SocketAddrV4::new(SENDER_IP, 0))
        .unwrap();
    // A port the policy denies: decided, never released.
    socket
        .send_to(b"denied", SocketAddrV4::new(RECEIVER_IP, PORT + 1))
        .unwrap();
    // The first datagram of an allowed flow: held, asked, released.
    let to = SocketAddrV4::new(RECEIVER_IP, PORT);
    socket.send_to(b"first", to).unwrap();
    let allowed_key = format!("{RECEIVER_IP} {PORT}");
    let flow_path = format!(
        "/v1/instances/{name}/flows/{}",
        common::encode(&allowed_key)
    );
    eventually("the released first datagram", || {
        (sink.received() == 1).then_some(())
    });
    let flow = daemon.json("GET", &flow_path, None, 200);
    assert_eq!(flow["state"], "ALLOWED", "{flow}");
    let denied_key = format!("{RECEIVER_IP} {}", PORT + 1);
    let denied = eventually("the denied flow", || {
        let (code, body) = daemon.request(
            "GET",
            &format!("/v1/instances/{name}/flows/{}", common::encode(&denied_key)),
            None,
        );
        (code == 200).then(|| serde_json::from_str::<Value>(&body).unwrap())
    });
    assert_eq!(denied["state"], "DENIED", "{denied}");
    let mut decisions = Vec::new();
    for _ in 0..2 {
        let mut line = String::new();
        said.read_line(&mut line).unwrap();
        decisions.push(line.trim().to_string());
    }
    decisions.sort();
    assert_eq!(
        decisions,
        [
            // Ethernet, IPv4 and UDP headers and "first".
            format!("{allowed_key}: ALLOWED, released {} bytes", 14 + 20 + 8 + 5),
            format!("{denied_key}: DENIED"),
        ],
        "the controller's log"
    );

    // Later datagrams never reach the controller: the fast path.
    const LATER: u64 = 20;
    for _ in 0..LATER {
        socket.send_to(b"later", to).unwrap();
        std::thread::sleep(Duration::from_millis(1));
    }
    socket
        .send_to(b"denied again", SocketAddrV4::new(RECEIVER_IP, PORT + 1))
        .unwrap();
    eventually("the later datagrams", || {
        (sink.received() == 1 + LATER).then_some(())
    });
    assert_eq!(row_packets(&daemon, &name, "NEW"), 2, "asked once per flow");
    eventually("the fast path's count", || {
        // The released datagram met the program again: ALLOWED as well.
        (row_packets(&daemon, &name, "ALLOWED") == 1 + LATER).then_some(())
    });
    assert_eq!(row_packets(&daemon, &name, "DENIED"), 1);
    let text = daemon.metrics();
    assert_eq!(
        sample(&text, "flowstate_events_total", &labels),
        Some(2.0),
        "{text}"
    );
}

#[test]
fn an_instance_the_daemon_does_not_own_is_read_only_while_a_client_subscribes() {
    const TEST: &str = "an_instance_the_daemon_does_not_own_is_read_only";
    if common::skip(TEST) {
        return;
    }
    let mut lab = lab("dnown");
    let scratch = Scratch::new("nown");
    let name = unique("dno");
    lab.stop_at_cleanup(&name);
    let program = scratch.0.join("ask.fsm");
    std::fs::write(&program, asking_program("ask")).unwrap();
    // The operator's own instance: the daemon does not own it.
    flowstate_control::run_in_netns(
        &flowstate_control::RunSpec {
            program_path: program.clone(),
            dev: "rb".into(),
            name: Some(name.clone()),
            ..flowstate_control::RunSpec::default()
        },
        Some(lab.receiver.name()),
    )
    .unwrap();
    let daemon = Daemon::start(&scratch.0.join("d"));
    let handle = flowstate_control::open(&name).unwrap();
    let mut direct = handle.events().unwrap();
    let drain = |direct: &mut flowstate_control::Events| {
        let mut n = 0;
        while direct
            .next_timeout(Duration::from_millis(500))
            .unwrap()
            .is_some()
        {
            n += 1;
        }
        n
    };

    // No subscriber: the daemon leaves the events to the operator.
    lab.send(5, 16);
    std::thread::sleep(Duration::from_secs(2)); // two of the daemon's syncs
    assert_eq!(
        drain(&mut direct),
        5,
        "the daemon took events it does not own"
    );
    let labels = [("instance", name.as_str())];
    let read_by_daemon = || sample(&daemon.metrics(), "flowstate_events_total", &labels);
    assert_eq!(read_by_daemon(), None, "a reader without a subscriber");

    // A client asks: the daemon reads them for it.
    let path = format!("/v1/instances/{name}/events");
    let mut stream = EventStream::open(&daemon.socket, &path);
    lab.send(3, 16);
    for seq in 1..=3 {
        let event = stream.next().unwrap();
        assert_eq!(event["seq"], seq, "{event}");
    }
    assert_eq!(read_by_daemon(), Some(3.0));
    // (aya's reader keeps its own position in the ring: the direct reader
    // may see these three as well; not what this test is about.)
    drain(&mut direct);

    // The client goes: the daemon stops reading.
    drop(stream);
    eventually("the subscriber gone", || {
        (sample(&daemon.metrics(), "flowstate_event_subscribers", &labels) == Some(0.0))
            .then_some(())
    });
    std::thread::sleep(Duration::from_millis(500)); // its reader's last poll
    lab.send(2, 16);
    assert_eq!(drain(&mut direct), 2);
    assert_eq!(read_by_daemon(), Some(3.0), "the daemon went on reading");
}
