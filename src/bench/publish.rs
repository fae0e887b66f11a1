//! The REST publisher: a few keep-alive HTTP/1.1 connections, one request in
//! flight on each, signed the way the official Pusher libraries sign.
//!
//! Channel `c` always goes through connection `c % publishers`, so the events of a
//! channel reach the server in sequence order and any reordering is the server's.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use md5::{Digest, Md5};
use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelHandle, Canceller};
use monoio::net::TcpStream;

use super::clients::{OPEN_TIMEOUT, Shared};
use super::ws::{self, Conn, OP_CLOSE, OP_TEXT, find};

/// One request and its response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed connect before the next attempt.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// What to publish.
pub struct PubPlan {
    pub addr: SocketAddr,
    pub app_id: String,
    pub app_key: String,
    pub app_secret: String,
    pub prefix: &'static str,
    pub channels: usize,
    /// Events per second, all channels together; 0 = flat out.
    pub rate: u64,
    pub payload_bytes: usize,
    /// Pad with ordinary words rather than `x` (`--text-payload`).
    pub text_payload: bool,
    pub publishers: usize,
    /// Publishing window, nanoseconds since `Shared::base`.
    pub start_ns: u64,
    pub end_ns: u64,
}

/// What the server accepted, per channel, and what went wrong.
pub struct PubReport {
    /// Events answered 200, per channel index.
    pub ok: Vec<u64>,
    pub errors: u64,
    /// Error description -> count.
    pub error_kinds: BTreeMap<String, u64>,
    /// Request-to-response time in microseconds.
    pub rest_hist: Histogram<u64>,
    pub connects: u64,
    /// Events whose request failed after it was written (timeout, reset): the
    /// server may or may not have delivered them. Per channel index.
    pub uncertain: Vec<u64>,
    /// A few failed requests in detail: channel, seq, when, how far the response got.
    pub error_samples: Vec<String>,
}

impl PubReport {
    pub(super) fn new(channels: usize) -> PubReport {
        PubReport {
            ok: vec![0; channels],
            errors: 0,
            error_kinds: BTreeMap::new(),
            rest_hist: Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("valid histogram bounds"),
            connects: 0,
            uncertain: vec![0; channels],
            error_samples: Vec::new(),
        }
    }

    pub(super) fn error(&mut self, kind: String) {
        self.errors += 1;
        *self.error_kinds.entry(kind).or_insert(0) += 1;
    }

    fn merge(&mut self, other: PubReport) {
        for (a, b) in self.ok.iter_mut().zip(other.ok) {
            *a += b;
        }
        self.errors += other.errors;
        for (k, v) in other.error_kinds {
            *self.error_kinds.entry(k).or_insert(0) += v;
        }
        let _ = self.rest_hist.add(&other.rest_hist);
        self.connects += other.connects;
        for (a, b) in self.uncertain.iter_mut().zip(other.uncertain) {
            *a += b;
        }
        self.error_samples.extend(other.error_samples);
    }
}

/// Runs the publishers on their own thread; the report arrives on the channel.
pub fn spawn(plan: PubPlan, shared: Arc<Shared>) -> mpsc::Receiver<PubReport> {
    on_thread("loadgen-publish", move || async move {
        let plan = Arc::new(plan);
        let handles: Vec<_> = (0..plan.publishers.min(plan.channels))
            .map(|p| monoio::spawn(publisher(p, plan.clone(), shared.clone())))
            .collect();
        let mut total = PubReport::new(plan.channels);
        for h in handles {
            total.merge(h.await);
        }
        total
    })
}

/// Runs the future `work` makes on a new thread named `name`, on its own monoio
/// runtime; its report arrives on the channel (which closes without one if the
/// runtime cannot start).
pub fn on_thread<W, F>(name: &str, work: W) -> mpsc::Receiver<PubReport>
where
    W: FnOnce() -> F + Send + 'static,
    F: std::future::Future<Output = PubReport>,
{
    let (tx, rx) = mpsc::channel();
    let label = name.to_string();
    std::thread::Builder::new()
        .name(label.clone())
        .spawn(move || {
            let rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
                .enable_timer()
                .build();
            match rt {
                Ok(mut rt) => {
                    let _ = tx.send(rt.block_on(work()));
                }
                Err(e) => eprintln!("{label}: runtime: {e}"),
            }
        })
        .expect("spawning a load generator thread");
    rx
}

/// `auth_*` query string with its signature, for one body.
pub fn signed_query(plan: &PubPlan, body: &[u8], unix_s: u64) -> String {
    let body_md5 = hex::encode(Md5::digest(body));
    let query = format!(
        "auth_key={}&auth_timestamp={unix_s}&auth_version=1.0&body_md5={body_md5}",
        plan.app_key
    );
    let to_sign = format!("POST\n/apps/{}/events\n{query}", plan.app_id);
    format!(
        "{query}&auth_signature={}",
        ws::hmac_hex(&plan.app_secret, &to_sign)
    )
}

/// An event's `data`: `s=SEQ;t=NANOS;pad=xxx` padded to `payload_bytes`, what the
/// receivers parse.
pub fn event_data(plan: &PubPlan, seq: u64, t_ns: u64) -> String {
    let mut data = format!("s={seq};t={t_ns};pad=");
    pad(&mut data, plan.payload_bytes, plan.text_payload, seq);
    data
}

/// Pads `data` to `len` bytes: with `x`, or with ordinary lower-case words (picked by a
/// small generator seeded with `seed`, so events differ) for `--text-payload`.
pub fn pad(data: &mut String, len: usize, text: bool, seed: u64) {
    const WORDS: [&str; 24] = [
        "order",
        "shipped",
        "customer",
        "warehouse",
        "delivery",
        "status",
        "updated",
        "payment",
        "received",
        "invoice",
        "pending",
        "address",
        "changed",
        "review",
        "the",
        "for",
        "item",
        "with",
        "price",
        "total",
        "account",
        "message",
        "new",
        "and",
    ];
    if !text {
        data.extend(std::iter::repeat_n('x', len.saturating_sub(data.len())));
        return;
    }
    let mut state = seed.wrapping_mul(6_364_136_223_846_793_005) | 1;
    while data.len() < len {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let word = WORDS[(state >> 33) as usize % WORDS.len()];
        data.push_str(word);
        data.push(' ');
        if state >> 60 == 0 {
            data.push_str(&format!("{} ", (state >> 40) % 10_000));
        }
    }
    data.truncate(len);
}

/// The event body, with [`event_data`].
pub fn event_body(plan: &PubPlan, channel: usize, seq: u64, t_ns: u64) -> Vec<u8> {
    let data = event_data(plan, seq, t_ns);
    format!(
        r#"{{"name":"bench","channel":"{}-{channel}","data":"{data}"}}"#,
        plan.prefix
    )
    .into_bytes()
}

/// `POST /apps/{id}/events` with `body`, signed now.
fn post_request(plan: &PubPlan, body: &[u8]) -> Vec<u8> {
    let unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let query = signed_query(plan, body, unix_s);
    let mut req = format!(
        "POST /apps/{}/events?{query} HTTP/1.1\r\nHost: {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        plan.app_id,
        plan.addr,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body);
    req
}

async fn publisher(p: usize, plan: Arc<PubPlan>, shared: Arc<Shared>) -> PubReport {
    let mut report = PubReport::new(plan.channels);
    let mine: Vec<usize> = (0..plan.channels)
        .filter(|c| c % plan.publishers == p)
        .collect();
    let mut stream: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let progress = Cell::new(Progress::Writing);
    let mut requests = 0u64;
    'rounds: for seq in 0u64.. {
        for &c in &mine {
            if !pace(&plan, &shared, seq, c).await {
                break 'rounds;
            }
            let s = match stream.take() {
                Some(s) => s,
                None => match TcpStream::connect(plan.addr).await {
                    Ok(s) => {
                        let _ = s.set_nodelay(true);
                        report.connects += 1;
                        requests = 0;
                        s
                    }
                    Err(e) => {
                        report.error(format!("connect: {e}"));
                        monoio::time::sleep(RECONNECT_PAUSE).await;
                        continue;
                    }
                },
            };
            let t_ns = shared.now_ns();
            let req = post_request(&plan, &event_body(&plan, c, seq, t_ns));
            requests += 1;
            progress.set(Progress::Writing);
            let exchange =
                monoio::time::timeout(REQUEST_TIMEOUT, request(s, req, &mut buf, &progress)).await;
            let elapsed_us = (shared.now_ns().saturating_sub(t_ns) / 1000).max(1);
            let (s, status, body, keep) = match exchange {
                Ok(Ok(done)) => done,
                failed => {
                    let kind = match failed {
                        Ok(Err(e)) => e,
                        _ => format!("no response within {REQUEST_TIMEOUT:?}"),
                    };
                    if progress.get() != Progress::Writing {
                        report.uncertain[c] += 1;
                    }
                    if report.error_samples.len() < 5 {
                        report.error_samples.push(format!(
                            "{kind}: {}-{c} seq {seq} sent at +{:.3} s, request #{requests} on \
                             REST connection {p} (connection #{}), {:?}",
                            plan.prefix,
                            t_ns.saturating_sub(plan.start_ns) as f64 / 1e9,
                            report.connects,
                            progress.get()
                        ));
                    }
                    report.error(kind);
                    continue;
                }
            };
            report.rest_hist.saturating_record(elapsed_us);
            if status == 200 {
                report.ok[c] += 1;
            } else {
                let body = String::from_utf8_lossy(&body[..body.len().min(160)]);
                report.error(format!("HTTP {status}: {body}"));
            }
            if keep {
                stream = Some(s);
            }
        }
    }
    report
}

/// Waits until event `seq` of channel `c` is due: at `--rate`, events of all channels
/// are spread evenly from `start_ns`; flat out, it only waits for `start_ns`. False
/// once the event would fall at or past `end_ns`.
pub async fn pace(plan: &PubPlan, shared: &Shared, seq: u64, c: usize) -> bool {
    let target = if plan.rate > 0 {
        let k = seq * plan.channels as u64 + c as u64;
        plan.start_ns + (k as f64 * 1e9 / plan.rate as f64) as u64
    } else {
        plan.start_ns
    };
    let now = shared.now_ns();
    if (plan.rate > 0 && target >= plan.end_ns) || now >= plan.end_ns {
        return false;
    }
    if target > now {
        monoio::time::sleep(Duration::from_nanos(target - now)).await;
    }
    true
}

/// How far a request got, for the report when it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    Writing,
    /// Written; bytes of the response received so far.
    AwaitingHead(usize),
    AwaitingBody(usize),
}

/// Writes one request and reads one response: (stream, status, body, keep-alive).
async fn request(
    mut s: TcpStream,
    req: Vec<u8>,
    buf: &mut Vec<u8>,
    progress: &Cell<Progress>,
) -> Result<(TcpStream, u16, Vec<u8>, bool), String> {
    let (res, _) = s.write_all(req).await;
    res.map_err(|e| format!("write: {e}"))?;
    buf.clear();
    progress.set(Progress::AwaitingHead(0));
    let head_end = loop {
        progress.set(Progress::AwaitingHead(buf.len()));
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i + 4;
        }
        if buf.len() > 64 * 1024 {
            return Err("response head over 64 KiB".into());
        }
        fill(&mut s, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("bad status line: {:?}", head.lines().next().unwrap_or("")))?;
    let mut content_length = None;
    let mut keep = true;
    for line in head.lines().skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (
            name.trim().to_ascii_lowercase(),
            value.trim().to_ascii_lowercase(),
        );
        match name.as_str() {
            "content-length" => content_length = value.parse::<usize>().ok(),
            "connection" if value == "close" => keep = false,
            "transfer-encoding" if value.contains("chunked") => {
                return Err("chunked response bodies are not supported".into());
            }
            _ => {}
        }
    }
    let Some(len) = content_length else {
        return Err(format!("HTTP {status} without Content-Length"));
    };
    if len > 16 * 1024 * 1024 {
        return Err(format!("Content-Length {len} is absurd"));
    }
    while buf.len() < head_end + len {
        progress.set(Progress::AwaitingBody(buf.len()));
        fill(&mut s, buf).await?;
    }
    let body = buf[head_end..head_end + len].to_vec();
    if buf.len() > head_end + len {
        return Err("bytes after the response body".into());
    }
    Ok((s, status, body, keep))
}

/// Appends at least one byte read from `s` to `buf`; EOF is an error here.
async fn fill(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), String> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    let v = std::mem::take(buf);
    let (len, cap) = (v.len(), v.capacity());
    let (res, slice) = s.read(v.slice_mut(len..cap)).await;
    *buf = slice.into_inner();
    match res {
        Ok(0) => Err("server closed the REST connection".into()),
        Ok(_) => Ok(()),
        Err(e) => Err(format!("read: {e}")),
    }
}

/// Pause between probe publishes.
const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Distinct failures of the probe kept for the report.
const PROBE_ERRORS: usize = 5;

/// How the link probe went.
pub struct Probe {
    /// From the probe subscriber's `subscription_succeeded` to the first probe event.
    pub waited: Duration,
    /// Probe publishes attempted (answered or not).
    pub published: u64,
    /// Probe publishes answered 200.
    pub accepted: u64,
    /// Failed probe publishes, e.g. `HTTP 500: ...` (the first few distinct ones).
    pub errors: Vec<String>,
}

/// Subscribes one connection to `channel` on `sub_addr`, then publishes a `probe`
/// event to `channel` through `plan.addr` every `PROBE_EVERY` until the subscriber
/// receives one, or `timeout` passes. Blocks the calling thread on its own runtime.
pub fn probe(
    plan: &PubPlan,
    sub_addr: SocketAddr,
    ws_path: &str,
    channel: &str,
    timeout: Duration,
) -> Result<Probe, String> {
    let mut rt = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
        .enable_timer()
        .build()
        .map_err(|e| format!("probe runtime: {e}"))?;
    // The outer bound covers the subscribe and the last request too.
    let bound = timeout + OPEN_TIMEOUT + REQUEST_TIMEOUT;
    rt.block_on(async {
        match monoio::time::timeout(
            bound,
            probe_async(plan, sub_addr, ws_path, channel, timeout),
        )
        .await
        {
            Ok(r) => r,
            Err(_) => Err(format!("link probe still running after {bound:?}")),
        }
    })
}

async fn probe_async(
    plan: &PubPlan,
    sub_addr: SocketAddr,
    ws_path: &str,
    channel: &str,
    timeout: Duration,
) -> Result<Probe, String> {
    let conn = match monoio::time::timeout(OPEN_TIMEOUT, ws::open(sub_addr, ws_path, channel, None))
        .await
    {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return Err(format!(
                "probe subscriber on {sub_addr}: {}: {}",
                e.stage, e.detail
            ));
        }
        Err(_) => {
            return Err(format!(
                "probe subscriber on {sub_addr}: not subscribed within {OPEN_TIMEOUT:?}"
            ));
        }
    };
    let t0 = Instant::now();
    let seen: Rc<RefCell<Option<Result<(), String>>>> = Rc::new(RefCell::new(None));
    let canceller = Canceller::new();
    let watcher = monoio::spawn(watch_probe(conn, seen.clone(), canceller.handle()));
    let mut out = Probe {
        waited: Duration::ZERO,
        published: 0,
        accepted: 0,
        errors: Vec::new(),
    };
    let body = format!(r#"{{"name":"probe","channel":"{channel}","data":"probe"}}"#).into_bytes();
    let mut stream: Option<TcpStream> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(1024);
    let progress = Cell::new(Progress::Writing);
    let result = loop {
        if let Some(outcome) = seen.borrow_mut().take() {
            out.waited = t0.elapsed();
            break outcome.map(|()| out);
        }
        if t0.elapsed() >= timeout {
            break Err(format!(
                "no probe event crossed from {} to the subscriber on {sub_addr} within \
                 {timeout:?}: {} published; failures: {}",
                plan.addr,
                out.published,
                if out.errors.is_empty() {
                    "none (every publish answered 200)".to_string()
                } else {
                    out.errors.join("; ")
                }
            ));
        }
        out.published += 1;
        match probe_once(plan, &mut stream, &body, &mut buf, &progress).await {
            None => out.accepted += 1,
            Some(e) if out.errors.len() < PROBE_ERRORS && !out.errors.contains(&e) => {
                out.errors.push(e);
            }
            Some(_) => {}
        }
        // Wait for the delivery in small steps, so the link time is measured finely.
        let next = Instant::now() + PROBE_EVERY;
        while Instant::now() < next && seen.borrow().is_none() {
            monoio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    drop(canceller.cancel());
    let _ = monoio::time::timeout(Duration::from_secs(2), watcher).await;
    result
}

/// One probe publish on the kept connection (or a new one); the failure, if any.
async fn probe_once(
    plan: &PubPlan,
    stream: &mut Option<TcpStream>,
    body: &[u8],
    buf: &mut Vec<u8>,
    progress: &Cell<Progress>,
) -> Option<String> {
    let s = match stream.take() {
        Some(s) => s,
        None => match monoio::time::timeout(REQUEST_TIMEOUT, TcpStream::connect(plan.addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                s
            }
            Ok(Err(e)) => return Some(format!("connect: {e}")),
            Err(_) => return Some(format!("connect: no answer within {REQUEST_TIMEOUT:?}")),
        },
    };
    let req = post_request(plan, body);
    match monoio::time::timeout(REQUEST_TIMEOUT, request(s, req, buf, progress)).await {
        Ok(Ok((s, status, resp, keep))) => {
            if keep {
                *stream = Some(s);
            }
            (status != 200).then(|| {
                let resp = String::from_utf8_lossy(&resp[..resp.len().min(160)]);
                format!("HTTP {status}: {resp}")
            })
        }
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!("no response within {REQUEST_TIMEOUT:?}")),
    }
}

/// Reads the probe subscriber until an event named `probe` arrives (Ok), the server
/// closes it (Err), or it is cancelled.
async fn watch_probe(
    mut conn: Conn,
    seen: Rc<RefCell<Option<Result<(), String>>>>,
    cancel: CancelHandle,
) {
    let outcome = loop {
        let mut found = None;
        while let Some(f) = conn.frames.next_frame() {
            let msg = conn.frames.bytes(&f.payload);
            match f.opcode {
                OP_TEXT if ws::event_name(msg) == Some(b"probe") => found = Some(Ok(())),
                OP_CLOSE => {
                    found = Some(Err(format!(
                        "the probe subscriber was closed with {}",
                        ws::close_code(msg)
                    )));
                }
                _ => {}
            }
            if found.is_some() {
                break;
            }
        }
        if let Some(o) = found {
            break o;
        }
        match conn.frames.fill(&mut conn.stream, Some(&cancel)).await {
            Ok(0) => break Err("the probe subscriber's server closed TCP (EOF)".into()),
            Ok(_) => {}
            // Cancelled, or a real error: either way the probe is over.
            Err(e) => break Err(format!("probe subscriber read: {e}")),
        }
    };
    let mut slot = seen.borrow_mut();
    if slot.is_none() {
        *slot = Some(outcome);
    }
}
