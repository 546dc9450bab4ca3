//! A shaped link in userspace: a TCP proxy on 127.0.0.1 that charges a round trip for each new
//! connection, delays each direction by RTT/2 and paces bytes to the bandwidth with one shared
//! budget per direction, like one link. (This machine's kernel has no netem qdisc.) It also
//! counts what crosses it: requests and bytes from the registry.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A link profile.
#[derive(Debug, Clone, Copy)]
pub struct Profile {
    /// Name, e.g. `200mbit-10ms`.
    pub name: &'static str,
    /// Bits per second.
    pub bits_per_sec: u64,
    /// Round-trip time.
    pub rtt: Duration,
}

/// The profiles the benchmark knows.
pub const PROFILES: [Profile; 2] = [
    Profile {
        name: "200mbit-10ms",
        bits_per_sec: 200_000_000,
        rtt: Duration::from_millis(10),
    },
    Profile {
        name: "50mbit-40ms",
        bits_per_sec: 50_000_000,
        rtt: Duration::from_millis(40),
    },
];

/// One direction of the link: when it is next free.
struct Direction {
    free_at: Mutex<Instant>,
    bytes_per_sec: f64,
    one_way: Duration,
}

impl Direction {
    /// For `len` bytes read now: when the link has sent them, and when they arrive at the
    /// other end.
    fn schedule(&self, len: usize) -> (Instant, Instant) {
        let now = Instant::now();
        let mut free = self.free_at.lock().expect("link lock");
        let start = (*free).max(now);
        let wire = Duration::from_secs_f64(len as f64 / self.bytes_per_sec);
        *free = start + wire;
        (start + wire, start + wire + self.one_way)
    }
}

/// A running shaper; stops accepting when dropped.
pub struct Shaper {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Bytes from the upstream (the registry) to clients.
    pub down_bytes: Arc<AtomicU64>,
    /// Connections and HTTP requests (lines starting with a method) seen.
    pub requests: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Drop for Shaper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

impl Shaper {
    /// Starts shaping the link to `upstream` with `p`.
    pub fn start(upstream: &str, p: Profile) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind shaper");
        let addr = listener.local_addr().expect("addr").to_string();
        let bytes_per_sec = p.bits_per_sec as f64 / 8.0;
        let link = || {
            Arc::new(Direction {
                free_at: Mutex::new(Instant::now()),
                bytes_per_sec,
                one_way: p.rtt / 2,
            })
        };
        let (up, down) = (link(), link());
        let down_bytes = Arc::new(AtomicU64::new(0));
        let requests = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (db, rq, st) = (down_bytes.clone(), requests.clone(), stop.clone());
        let upstream = upstream.to_string();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let (up, down, db, rq, upstream) = (
                    up.clone(),
                    down.clone(),
                    db.clone(),
                    rq.clone(),
                    upstream.clone(),
                );
                std::thread::spawn(move || {
                    // The handshake costs a round trip.
                    std::thread::sleep(p.rtt);
                    let Ok(server) = TcpStream::connect(&upstream) else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (c2, s2) = (
                        client.try_clone().expect("clone"),
                        server.try_clone().expect("clone"),
                    );
                    let t = std::thread::spawn(move || pump(c2, s2, &up, None, Some(&rq)));
                    pump(server, client, &down, Some(&db), None);
                    let _ = t.join();
                });
            }
        });
        Self {
            addr,
            down_bytes,
            requests,
            stop,
        }
    }

    /// Bytes and requests so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.down_bytes.load(Ordering::Relaxed),
            self.requests.load(Ordering::Relaxed),
        )
    }

    /// Sets the counters to zero.
    pub fn reset(&self) {
        self.down_bytes.store(0, Ordering::Relaxed);
        self.requests.store(0, Ordering::Relaxed);
    }
}

const METHODS: [&[u8]; 5] = [b"GET ", b"HEAD ", b"POST ", b"PUT ", b"PATCH "];

fn sleep_until(t: Instant) {
    let now = Instant::now();
    if t > now {
        std::thread::sleep(t - now);
    }
}

/// Copies `from` to `to` through the link: reading is paced to the bandwidth (back pressure),
/// and each piece is delivered one-way latency later by a writer thread, so latency does not
/// limit throughput.
fn pump(
    mut from: TcpStream,
    to: TcpStream,
    dir: &Direction,
    bytes: Option<&AtomicU64>,
    requests: Option<&AtomicU64>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    let mut out = to.try_clone().expect("clone");
    let writer = std::thread::spawn(move || {
        for (at, piece) in rx {
            sleep_until(at);
            if out.write_all(&piece).is_err() {
                break;
            }
        }
    });
    let mut buf = vec![0u8; 16 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(r) = requests
            && METHODS.iter().any(|m| buf[..n].starts_with(m))
        {
            r.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(b) = bytes {
            b.fetch_add(n as u64, Ordering::Relaxed);
        }
        let (sent, arrives) = dir.schedule(n);
        if tx.send((arrives, buf[..n].to_vec())).is_err() {
            break;
        }
        sleep_until(sent);
    }
    drop(tx);
    let _ = writer.join();
    let _ = to.shutdown(Shutdown::Write);
}
