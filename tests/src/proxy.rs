//! A counting, fault-injecting HTTP proxy in front of the real registry. Each request is
//! forwarded on its own upstream connection (`Connection: close`), so requests and bytes are
//! counted exactly; faults are applied to range responses (206) or to every request.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward faithfully.
    None,
    /// Flip a byte in the body of every 206 response.
    CorruptRanges,
    /// Send only half the body of every 206 response, then close.
    TruncateRanges,
    /// Wait this long before forwarding each request.
    Delay(Duration),
    /// Answer every request with 503.
    Refuse,
    /// Answer the next N requests with 503, then forward (a transient outage).
    FailNext(u32),
    /// Drop the Range header, as a registry without range support would (answers 200).
    IgnoreRange,
    /// Accept each request and send nothing, holding the connection until the fault changes
    /// (at most two minutes): a registry that hangs.
    Stall,
    /// Send the head and half the body of every 206 response, then nothing more, holding the
    /// connection as [`Fault::Stall`] does: a transfer that stops.
    StallMidBody,
    /// Send the head and half the body of every 200 answer to a blob GET of more than
    /// [`BIG_BLOB`] bytes (layers, not configs), then nothing more, holding the connection as
    /// [`Fault::Stall`] does: a whole-blob transfer that stops.
    StallBlobsMidBody,
    /// Read every upload (PUT or PATCH) whole, then answer nothing, holding the connection as
    /// [`Fault::Stall`] does: a registry that hangs on a push.
    StallUploads,
    /// Flip a byte in the body of every 200 answer to a blob GET (whole blobs: pulls, convert).
    CorruptBlobs,
    /// Send only half the body of every 200 answer to a blob GET, then close (whole blobs).
    TruncateBlobs,
    /// Reset every connection (RST) once its request is read, answering nothing.
    Reset,
    /// Flip a byte in the body of every upload (PUT or PATCH with a body): a push.
    CorruptUploads,
    /// Answer every blob GET with a 307 to a URL on the proxy; the first such URL handed out for
    /// each blob path has "expired" and answers 403 (as a storage backend's signed URL does),
    /// later ones are forwarded.
    ExpiredRedirects,
    /// Until `until`, answer `status` (429 or 503) with `Retry-After` (delta-seconds, or an HTTP
    /// date that many seconds ahead) to every request, or only to those with a Range header.
    RateLimit {
        /// When the limit ends.
        until: std::time::Instant,
        /// 429 or 503.
        status: u16,
        /// The wait asked for.
        retry_after_secs: u64,
        /// Send the wait as an HTTP date instead of seconds.
        http_date: bool,
        /// Limit only range requests (lazy reads).
        ranges_only: bool,
    },
}

/// The size past which a blob is a layer for [`Fault::StallBlobsMidBody`].
pub const BIG_BLOB: usize = 64 << 10;

/// An HTTP date (IMF-fixdate) `secs` from now.
pub fn http_date_in(secs: u64) -> String {
    let out = std::process::Command::new("date")
        .args([
            "-u",
            "-d",
            &format!("+{secs} seconds"),
            "+%a, %d %b %Y %H:%M:%S GMT",
        ])
        .env("LC_ALL", "C")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Requests forwarded.
    pub requests: AtomicU64,
    /// Response body bytes forwarded.
    pub bytes: AtomicU64,
    /// Request lines seen ("GET /v2/... Range: bytes=a-b").
    pub log: Mutex<Vec<String>>,
    /// Redirects handed out ([`Fault::ExpiredRedirects`]).
    pub redirects: AtomicU64,
    /// Redirect targets that answered 403.
    pub expired: AtomicU64,
    /// Blob paths redirected once already.
    redirected: Mutex<std::collections::HashSet<String>>,
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// Counters.
    pub stats: Arc<Stats>,
    fault: Arc<Mutex<Fault>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    /// Starts a proxy to `upstream`.
    pub fn start(upstream: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let stats = Arc::new(Stats::default());
        let fault = Arc::new(Mutex::new(Fault::None));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, f, st, up) = (
            stats.clone(),
            fault.clone(),
            stop.clone(),
            upstream.to_string(),
        );
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (s, f, up) = (s.clone(), f.clone(), up.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, &up, &s, &f);
                });
            }
        });
        Self {
            addr,
            stats,
            fault,
            stop,
        }
    }

    /// Sets the fault mode.
    pub fn set(&self, f: Fault) {
        *self.fault.lock().unwrap() = f;
    }

    /// Resets the counters.
    pub fn reset(&self) {
        self.stats.requests.store(0, Ordering::Relaxed);
        self.stats.bytes.store(0, Ordering::Relaxed);
        self.stats.log.lock().unwrap().clear();
    }

    /// (requests, body bytes) since the last reset.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.stats.requests.load(Ordering::Relaxed),
            self.stats.bytes.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(&self.addr);
    }
}

/// Holds a connection while the fault is still `f` (at most two minutes), sending nothing.
fn hold(fault: &Mutex<Fault>, f: Fault) {
    let until = std::time::Instant::now() + Duration::from_secs(120);
    while *fault.lock().unwrap() == f && std::time::Instant::now() < until {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Closes `client` with a reset (RST) rather than an orderly FIN: a zero linger time.
fn reset(client: &TcpStream) {
    use std::os::fd::AsRawFd;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: the descriptor is open (borrowed from `client`), and `linger` is a valid
    // `struct linger` whose size is passed with it.
    unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            libc::socklen_t::try_from(std::mem::size_of::<libc::linger>()).unwrap_or(8),
        );
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

fn serve(
    mut client: TcpStream,
    upstream: &str,
    stats: &Stats,
    fault: &Mutex<Fault>,
) -> std::io::Result<()> {
    client.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut buf = Vec::new();
    let mut tmp = [0u8; 64 * 1024];
    let head_end = loop {
        if let Some(e) = find_head_end(&buf) {
            break e;
        }
        let n = client.read(&mut tmp)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let body_len: usize = header_value(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + body_len {
        let n = client.read(&mut tmp)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    let first = head.lines().next().unwrap_or("").to_string();
    let range = header_value(&head, "range")
        .map(|r| format!(" Range: {r}"))
        .unwrap_or_default();
    stats.log.lock().unwrap().push(format!("{first}{range}"));
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let f = {
        let mut g = fault.lock().unwrap();
        let f = *g;
        if let Fault::FailNext(n) = f {
            *g = if n <= 1 {
                Fault::None
            } else {
                Fault::FailNext(n - 1)
            };
        }
        f
    };
    if let Fault::Delay(d) = f {
        std::thread::sleep(d);
    }
    if f == Fault::Stall {
        hold(fault, f);
        return Ok(());
    }
    if f == Fault::Reset {
        reset(&client);
        return Ok(());
    }
    let mut head = head;
    let mut words = first.split(' ');
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    if let Some(rest) = path.strip_prefix("/_expiring/") {
        let (n, orig) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if n.parse::<u64>().unwrap_or(1) % 2 == 1 {
            stats.expired.fetch_add(1, Ordering::Relaxed);
            let body = r#"{"errors":[{"code":"DENIED","message":"request has expired"}]}"#;
            client.write_all(
                format!(
                    "HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )?;
            return Ok(());
        }
        head = head.replacen(path, orig, 1);
    } else if f == Fault::ExpiredRedirects && method == "GET" && path.contains("/blobs/") {
        stats.redirects.fetch_add(1, Ordering::Relaxed);
        // Odd: expired (the first for this path); even: good.
        let first = stats.redirected.lock().unwrap().insert(path.to_string());
        let n = if first { 1 } else { 2 };
        client.write_all(
            format!(
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: /_expiring/{n}{path}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )?;
        return Ok(());
    }
    if f == Fault::StallUploads && (method == "PUT" || method == "PATCH") {
        hold(fault, f);
        return Ok(());
    }
    if f == Fault::CorruptUploads
        && (method == "PUT" || method == "PATCH")
        && body_len > 0
        && let Some(b) = buf.get_mut(head_end + body_len / 2)
    {
        *b ^= 0xff;
    }
    if let Fault::RateLimit {
        until,
        status,
        retry_after_secs,
        http_date,
        ranges_only,
    } = f
        && std::time::Instant::now() < until
        && (!ranges_only || !range.is_empty())
    {
        let value = if http_date {
            http_date_in(retry_after_secs)
        } else {
            retry_after_secs.to_string()
        };
        let reason = if status == 429 {
            "Too Many Requests"
        } else {
            "Service Unavailable"
        };
        client.write_all(
            format!(
                "HTTP/1.1 {status} {reason}\r\nRetry-After: {value}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            .as_bytes(),
        )?;
        return Ok(());
    }
    if matches!(f, Fault::Refuse | Fault::FailNext(_)) {
        client.write_all(
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )?;
        return Ok(());
    }
    // Forward with Connection: close so the upstream response ends at EOF.
    let mut new_head: Vec<String> = head
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .filter(|l| f != Fault::IgnoreRange || !l.to_ascii_lowercase().starts_with("range:"))
        .map(|l| l.to_string())
        .collect();
    new_head.push("Connection: close".into());
    let mut up = TcpStream::connect(upstream)?;
    up.write_all(format!("{}\r\n\r\n", new_head.join("\r\n")).as_bytes())?;
    up.write_all(&buf[head_end..])?;
    let mut resp = Vec::new();
    up.read_to_end(&mut resp)?;
    let Some(rh) = find_head_end(&resp) else {
        return Ok(());
    };
    let status_206 = resp.starts_with(b"HTTP/1.1 206") || resp.starts_with(b"HTTP/1.0 206");
    let status_200 = resp.starts_with(b"HTTP/1.1 200") || resp.starts_with(b"HTTP/1.0 200");
    let blob_get = method == "GET" && path.contains("/blobs/");
    let body = resp.len() - rh;
    stats.bytes.fetch_add(body as u64, Ordering::Relaxed);
    match f {
        Fault::CorruptRanges if status_206 && body > 0 => {
            let i = rh + body / 2;
            resp[i] ^= 0xff;
            client.write_all(&resp)?;
        }
        Fault::TruncateRanges if status_206 && body > 1 => {
            client.write_all(&resp[..rh + body / 2])?;
        }
        Fault::StallMidBody if status_206 && body > 1 => {
            client.write_all(&resp[..rh + body / 2])?;
            client.flush()?;
            hold(fault, f);
            return Ok(());
        }
        Fault::StallBlobsMidBody if blob_get && status_200 && body > BIG_BLOB => {
            client.write_all(&resp[..rh + body / 2])?;
            client.flush()?;
            hold(fault, f);
            return Ok(());
        }
        Fault::TruncateBlobs if blob_get && status_200 && body > 1 => {
            client.write_all(&resp[..rh + body / 2])?;
        }
        Fault::CorruptBlobs if blob_get && status_200 && body > 0 => {
            resp[rh + body / 2] ^= 0xff;
            client.write_all(&resp)?;
        }
        _ => client.write_all(&resp)?,
    }
    client.flush()?;
    Ok(())
}
