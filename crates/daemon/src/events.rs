//! The slow path's first half: flowstated as the single reader of
//! `controller` events, fanning them out to subscribers.
//!
//! ```text
//!  ring buffer ─one reader thread per instance─▶ Channel ─▶ Subscriber queue ─▶ GET .../events (NDJSON)
//!                                                   └────▶ Subscriber queue ─▶ another client
//! ```
//!
//! A ring buffer has one consumer position, which each reader publishes
//! as it goes (aya 0.14's `RingBuf` keeps its own copy and stores it after
//! each record): with two readers the kernel may reuse space one of them
//! has not read yet, so one may see repeated or overwritten events. The
//! daemon reads each instance's ring buffer once and gives every
//! subscriber its own copy.
//!
//! - **Owned instances** (started by the daemon) with a `controller`
//!   action are read all the time, whether or not anyone subscribes (the
//!   events counter then counts every event). [`Hub::sync`] starts and
//!   stops those readers as instances come, go or are reloaded.
//! - **Other instances** (a `flowstate run`) are read only while a client
//!   subscribes: the daemon does not take events from a CLI user who may
//!   be reading them with `flowstate events`.
//! - **Bounded queues.** Each subscriber has its own queue of at most
//!   `buffer` events. When it is full, its oldest event is dropped and
//!   counted; the subscriber is told how many before its next event. The
//!   reader never waits for a subscriber, so a slow one loses only its
//!   own events.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Bytes;
use flowstate_control::{ControlError, Event};
use serde_json::json;
use tokio::sync::Notify;

/// Events a subscriber's queue holds unless it asks otherwise.
pub const DEFAULT_BUFFER: usize = 1024;
/// The largest queue a subscriber may ask for.
pub const MAX_BUFFER: usize = 65_536;
/// How long a reader waits on its ring buffer before checking whether it
/// should stop.
const READ_POLL: Duration = Duration::from_millis(200);

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking holder leaves plain data behind: keep going with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every instance's channel.
#[derive(Default)]
pub struct Hub {
    channels: Mutex<HashMap<String, Arc<Channel>>>,
    next_subscriber: AtomicU64,
}

/// One instance's events: its reader and its subscribers.
pub struct Channel {
    instance: String,
    subscribers: Mutex<Vec<Arc<Subscriber>>>,
    /// Events read from the ring buffer since the daemon started.
    events_total: AtomicU64,
    /// The running reader, if any.
    reader: Mutex<Option<Reader>>,
}

/// A reader thread and the program it reads for.
struct Reader {
    prog_id: u32,
    /// Read all the time (an owned instance), or only for subscribers.
    always: bool,
    stop: Arc<AtomicBool>,
    /// `None` for an instance without events (nothing to read).
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Reader {
    fn alive(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for Reader {
    /// Stops the thread and waits for it (at most [`READ_POLL`]): two
    /// consumers of one ring buffer must never overlap.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One client's view of a channel.
pub struct Subscriber {
    pub id: u64,
    queue: Mutex<Queue>,
    notify: Notify,
}

struct Queue {
    lines: VecDeque<Bytes>,
    capacity: usize,
    /// Dropped since the subscriber was last told.
    dropped_untold: u64,
    dropped_total: u64,
    /// Why the stream ends (instance stopped, reader failed), once it does.
    closed: Option<String>,
}

/// What a subscriber's stream gives next.
pub enum Next {
    /// One line (an event, or a notice of dropped events), with its `\n`.
    Line(Bytes),
    /// Nothing yet: wait on [`Subscriber::wait`].
    Empty,
    /// The last line: why the stream ends.
    Closed(Bytes),
}

impl Subscriber {
    fn push(&self, line: Bytes) {
        let mut q = locked(&self.queue);
        if q.lines.len() >= q.capacity {
            q.lines.pop_front();
            q.dropped_untold += 1;
            q.dropped_total += 1;
        }
        q.lines.push_back(line);
        drop(q);
        self.notify.notify_one();
    }

    fn close(&self, why: &str) {
        locked(&self.queue)
            .closed
            .get_or_insert_with(|| why.to_string());
        self.notify.notify_one();
    }

    pub fn dropped_total(&self) -> u64 {
        locked(&self.queue).dropped_total
    }

    /// The next line to send.
    pub fn next(&self) -> Next {
        let mut q = locked(&self.queue);
        if q.dropped_untold > 0 {
            let line = json_line(&json!({
                "dropped": q.dropped_untold,
                "dropped_total": q.dropped_total,
            }));
            q.dropped_untold = 0;
            return Next::Line(line);
        }
        if let Some(line) = q.lines.pop_front() {
            return Next::Line(line);
        }
        match &q.closed {
            Some(why) => Next::Closed(json_line(&json!({ "closed": why }))),
            None => Next::Empty,
        }
    }

    /// Waits until something is pushed (or the subscriber is closed).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

fn json_line(value: &serde_json::Value) -> Bytes {
    let mut text = value.to_string();
    text.push('\n');
    Bytes::from(text)
}

/// An event as subscribers receive it (one JSON object per line).
pub fn event_json(instance: &str, seq: u64, e: &Event) -> serde_json::Value {
    let head: String = e.head.iter().map(|b| format!("{b:02x}")).collect();
    json!({
        "instance": instance,
        "seq": seq,
        "time_ns": e.time_ns,
        "received_unix": e.received.duration_since(UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64()),
        "key": e.key,
        "state": e.state,
        "row_line": e.row_line,
        "pkt_len": e.pkt_len,
        "head_hex": head,
        "summary": e.summary,
    })
}

impl Channel {
    fn new(instance: &str) -> Channel {
        Channel {
            instance: instance.to_string(),
            subscribers: Mutex::new(Vec::new()),
            events_total: AtomicU64::new(0),
            reader: Mutex::new(None),
        }
    }

    fn publish(&self, e: &Event) {
        let seq = self.events_total.fetch_add(1, Ordering::Relaxed) + 1;
        let line = json_line(&event_json(&self.instance, seq, e));
        for subscriber in locked(&self.subscribers).iter() {
            subscriber.push(line.clone());
        }
    }

    fn close_all(&self, why: &str) {
        for subscriber in locked(&self.subscribers).drain(..) {
            subscriber.close(why);
        }
    }

    /// Starts reading `events` on a thread; the caller stores the
    /// [`Reader`] in `self.reader`, whose lock it holds.
    fn start_reader(
        self: &Arc<Self>,
        prog_id: u32,
        always: bool,
        events: flowstate_control::Events,
    ) -> Option<Reader> {
        let stop = Arc::new(AtomicBool::new(false));
        let channel = self.clone();
        let stop_thread = stop.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("events-{}", self.instance))
            .spawn(move || channel.read(events, &stop_thread));
        match spawned {
            Ok(thread) => Some(Reader {
                prog_id,
                always,
                stop,
                thread: Some(thread),
            }),
            Err(e) => {
                eprintln!(
                    "flowstated: cannot start the events reader of {}: {e}",
                    self.instance
                );
                None
            }
        }
    }

    fn read(&self, mut events: flowstate_control::Events, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match events.next_timeout(READ_POLL) {
                Ok(Some(event)) => self.publish(&event),
                Ok(None) => {}
                Err(e) => {
                    eprintln!("flowstated: reading {}'s events: {e}", self.instance);
                    self.close_all(&format!("reading the events failed: {e}"));
                    break;
                }
            }
        }
    }

    fn stop_reader(&self) {
        let reader = locked(&self.reader).take();
        drop(reader);
    }

    pub fn instance(&self) -> &str {
        &self.instance
    }

    pub fn events_total(&self) -> u64 {
        self.events_total.load(Ordering::Relaxed)
    }

    pub fn subscribers(&self) -> Vec<Arc<Subscriber>> {
        locked(&self.subscribers).clone()
    }
}

/// A subscription: unsubscribes when dropped (the client went away).
pub struct Subscription {
    pub subscriber: Arc<Subscriber>,
    channel: Arc<Channel>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut subscribers = locked(&self.channel.subscribers);
        subscribers.retain(|s| s.id != self.subscriber.id);
        let none_left = subscribers.is_empty();
        drop(subscribers);
        // An instance the daemon does not own is read only for
        // subscribers. (Stopping waits for the thread, at most READ_POLL.)
        let mut reader = locked(&self.channel.reader);
        if none_left && reader.as_ref().is_some_and(|r| !r.always) {
            *reader = None;
        }
    }
}

/// An instance as [`Hub::sync`] needs it.
pub struct Running {
    pub name: String,
    pub prog_id: u32,
    pub owned: bool,
}

impl Hub {
    fn channel(&self, instance: &str) -> Arc<Channel> {
        locked(&self.channels)
            .entry(instance.to_string())
            .or_insert_with(|| Arc::new(Channel::new(instance)))
            .clone()
    }

    /// Channels by instance name, for the metrics.
    pub fn channels(&self) -> Vec<Arc<Channel>> {
        let mut all: Vec<_> = locked(&self.channels).values().cloned().collect();
        all.sort_by(|a, b| a.instance.cmp(&b.instance));
        all
    }

    /// Subscribes to `instance`'s events with a queue of `buffer` events,
    /// starting a reader if none runs. Runs on a blocking thread (opening
    /// the instance compiles its saved program).
    pub fn subscribe(
        &self,
        instance: &str,
        buffer: usize,
        owned: bool,
    ) -> Result<Subscription, ControlError> {
        let channel = self.channel(instance);
        let subscriber = Arc::new(Subscriber {
            id: self.next_subscriber.fetch_add(1, Ordering::Relaxed) + 1,
            queue: Mutex::new(Queue {
                lines: VecDeque::new(),
                capacity: buffer.clamp(1, MAX_BUFFER),
                dropped_untold: 0,
                dropped_total: 0,
                closed: None,
            }),
            notify: Notify::new(),
        });
        // The reader lock is held while opening, so two first subscribers
        // (or a subscriber and `sync`) start one reader, not two.
        let mut reader = locked(&channel.reader);
        if reader.as_ref().is_none_or(|r| !r.alive()) {
            let handle = flowstate_control::open(instance)?;
            let prog_id = current_prog_id(instance)?;
            let events = handle.events()?;
            *reader = channel.start_reader(prog_id, owned, events);
        }
        locked(&channel.subscribers).push(subscriber.clone());
        drop(reader);
        Ok(Subscription {
            subscriber,
            channel,
        })
    }

    /// Makes the readers follow the running instances: a reader for every
    /// owned instance with a `controller` action, a new reader when an
    /// instance's program changed (a reload may bring a new ring buffer),
    /// and subscribers told and let go when their instance is gone.
    pub fn sync(&self, running: &[Running]) {
        // Instances gone: close their subscribers.
        let gone: Vec<Arc<Channel>> = {
            let mut channels = locked(&self.channels);
            let names: Vec<String> = channels
                .keys()
                .filter(|n| !running.iter().any(|r| &r.name == *n))
                .cloned()
                .collect();
            names.iter().filter_map(|n| channels.remove(n)).collect()
        };
        for channel in gone {
            channel.stop_reader();
            channel.close_all("the instance is not running any more");
        }
        for instance in running {
            let known = locked(&self.channels).get(&instance.name).cloned();
            let channel = match known {
                Some(channel) => channel,
                None if instance.owned => self.channel(&instance.name),
                None => continue,
            };
            let mut reader = locked(&channel.reader);
            let current = reader.as_ref().map(|r| {
                let current = r.prog_id == instance.prog_id && (r.alive() || r.thread.is_none());
                (current, r.always)
            });
            let wanted = instance.owned || !locked(&channel.subscribers).is_empty();
            match current {
                Some((true, always)) if always || !instance.owned => continue,
                None if !wanted => continue,
                _ => {}
            }
            *reader = None;
            if !wanted {
                continue;
            }
            let events = flowstate_control::open(&instance.name).and_then(|h| h.events());
            *reader = match events {
                Ok(events) => channel.start_reader(instance.prog_id, instance.owned, events),
                // No `controller` action: nothing to read. Remembered as
                // a reader without a thread, so the program is not opened
                // again until a reload changes it.
                Err(ControlError::NoSuchName { .. }) => Some(Reader {
                    prog_id: instance.prog_id,
                    always: true,
                    stop: Arc::new(AtomicBool::new(true)),
                    thread: None,
                }),
                Err(e) => {
                    eprintln!("flowstated: cannot read {}'s events: {e}", instance.name);
                    None
                }
            };
        }
    }
}

fn current_prog_id(name: &str) -> Result<u32, ControlError> {
    flowstate_control::list()?
        .into_iter()
        .find(|i| i.name == name)
        .map(|i| i.prog_id)
        .ok_or_else(|| ControlError::NotRunning(name.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscriber(capacity: usize) -> Subscriber {
        Subscriber {
            id: 1,
            queue: Mutex::new(Queue {
                lines: VecDeque::new(),
                capacity,
                dropped_untold: 0,
                dropped_total: 0,
                closed: None,
            }),
            notify: Notify::new(),
        }
    }

    fn line(next: Next) -> String {
        match next {
            Next::Line(b) | Next::Closed(b) => String::from_utf8(b.to_vec()).unwrap(),
            Next::Empty => "empty".into(),
        }
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_says_how_many_before_the_next() {
        let s = subscriber(2);
        for n in 1..=5 {
            s.push(Bytes::from(format!("{n}\n")));
        }
        assert_eq!(line(s.next()), "{\"dropped\":3,\"dropped_total\":3}\n");
        assert_eq!(line(s.next()), "4\n");
        assert_eq!(line(s.next()), "5\n");
        assert_eq!(line(s.next()), "empty");
        s.close("bye");
        assert_eq!(line(s.next()), "{\"closed\":\"bye\"}\n");
        assert_eq!(s.dropped_total(), 3);
    }
}
