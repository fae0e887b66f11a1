//! Test support: a real corecast process on a free port, and a small blocking WebSocket
//! client over a real TCP socket, so tests see exactly what a client sees.
#![allow(dead_code)]

pub mod queue;
pub mod receiver;
pub mod redis_server;
pub mod rest;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A server process, killed on drop.
pub struct Server {
    pub port: u16,
    /// The metrics listener's port, when the server was started with metrics enabled.
    pub metrics_port: Option<u16>,
    child: Child,
    /// Every line the server wrote to stderr so far.
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// The server's stderr lines so far that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends a signal to the server process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on our own child's pid has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits up to `timeout` for the process to exit; returns its exit status.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `corecast start` with `shards` shards and extra environment, and waits for `/ready`.
///
/// The server listens on port 0 (and its metrics listener too, when enabled), so the
/// kernel picks ports no other test holds; the ports are read from the server's own
/// start-up lines. A port found free by a probe and passed to the server could be taken
/// in between by another test's server: with `SO_REUSEPORT` both would then share it.
pub fn start(shards: usize, env: &[(&str, &str)]) -> Server {
    spawn(shards, env, false)
}

/// Starts `corecast start` in worker mode (`SOKETI_MODE=worker`, metrics on) and waits
/// for its metrics port and its "sending queued webhooks" line; `port` is 0, as a
/// worker has no WebSocket or REST listener.
pub fn start_worker(env: &[(&str, &str)]) -> Server {
    let mut all = vec![
        ("SOKETI_MODE", "worker"),
        ("SOKETI_METRICS_ENABLED", "true"),
    ];
    all.extend_from_slice(env);
    spawn(1, &all, true)
}

fn spawn(shards: usize, env: &[(&str, &str)], worker: bool) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_corecast"));
    cmd.arg("start")
        .env("SOKETI_PORT", "0")
        .env("SOKETI_HOST", "127.0.0.1")
        .env("SOKETI_METRICS_SERVER_PORT", "0")
        .env("CORECAST_SHARDS", shards.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn corecast");
    let stderr = child.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let lines = std::sync::Arc::clone(&log);
    // Forwards the server's log to the test's stderr, keeps it, and reports its
    // listening ports.
    std::thread::spawn(move || {
        for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
            let Ok(line) = line else { break };
            eprintln!("{line}");
            lines
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(line.clone());
            if line == "corecast: worker: sending queued webhooks" {
                let _ = tx.send(("main", 0));
            }
            for (tag, what) in [
                ("corecast: listening on ", "main"),
                ("corecast: metrics on ", "metrics"),
            ] {
                if let Some(addr) = line.strip_prefix(tag)
                    && let Some(port) = addr
                        .rsplit(':')
                        .next()
                        .and_then(|p| p.trim().parse::<u16>().ok())
                {
                    let _ = tx.send((what, port));
                }
            }
        }
    });
    let metrics_wanted = env
        .iter()
        .any(|(k, v)| *k == "SOKETI_METRICS_ENABLED" && (*v == "true" || *v == "1"));
    let deadline = Instant::now() + Duration::from_secs(10);
    let (mut port, mut metrics_port) = (None, None);
    while port.is_none() || (metrics_wanted && metrics_port.is_none()) {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(("main", p)) => port = Some(p),
            Ok((_, p)) => metrics_port = Some(p),
            Err(_) => {
                let status = child.try_wait().ok().flatten();
                let _ = child.kill();
                panic!("server did not report its ports within 10 s (exit: {status:?})");
            }
        }
    }
    let port = port.expect("loop ends with a port");
    let server = Server {
        port,
        metrics_port,
        child,
        log,
    };
    if worker {
        return server;
    }
    loop {
        if let Ok((status, body)) = http(port, "GET", "/ready", &[], b"")
            && status == 200
            && body == b"OK"
        {
            return server;
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<(u16, Vec<u8>)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let end = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let head = String::from_utf8_lossy(&resp[..end]).to_string();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    Ok((status, resp[end + 4..].to_vec()))
}

/// A frame as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    /// RSV1: a permessage-deflate compressed message.
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The payload as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.payload).into_owned()
    }

    /// The payload as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).expect("server frame is JSON")
    }

    /// The close code of a close frame.
    pub fn close_code(&self) -> Option<u16> {
        (self.opcode == 8 && self.payload.len() >= 2)
            .then(|| u16::from_be_bytes([self.payload[0], self.payload[1]]))
    }
}

/// A raw WebSocket client.
pub struct Ws {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// The upgrade request for `path` with a valid key.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

impl Ws {
    /// Connects and upgrades on `path`, asserting the 101; returns the client.
    pub fn connect(port: u16, path: &str) -> Ws {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        Ws::upgrade(stream, path)
    }

    /// Upgrades an already connected `stream` on `path`, asserting the 101.
    pub fn upgrade(mut stream: TcpStream, path: &str) -> Ws {
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(upgrade_request(path).as_bytes())
            .expect("write");
        let mut ws = Ws {
            stream,
            buf: Vec::new(),
        };
        let head = ws.read_head();
        assert!(head.starts_with("HTTP/1.1 101"), "no 101: {head}");
        assert!(
            head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
            "wrong accept key: {head}"
        );
        ws
    }

    /// Connects and upgrades on `path` with extra request header lines (each ending in
    /// CRLF), asserting the 101; returns the client and the response head.
    pub fn connect_with(port: u16, path: &str, headers: &str) -> (Ws, String) {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let request = upgrade_request(path);
        let request = format!("{}{headers}\r\n", &request[..request.len() - 2]);
        stream.write_all(request.as_bytes()).expect("write");
        let mut ws = Ws {
            stream,
            buf: Vec::new(),
        };
        let head = ws.read_head();
        assert!(head.starts_with("HTTP/1.1 101"), "no 101: {head}");
        (ws, head)
    }

    /// Connects to the default app and returns the client and its socket id.
    pub fn pusher(port: u16) -> (Ws, String) {
        let mut ws = Ws::connect(port, "/app/app-key?protocol=7&client=js&version=8.4.0");
        let hello = ws.read_json();
        assert_eq!(hello["event"], "pusher:connection_established");
        let data: serde_json::Value =
            serde_json::from_str(hello["data"].as_str().expect("string data")).expect("json");
        let id = data["socket_id"].as_str().expect("socket id").to_owned();
        (ws, id)
    }

    fn read_head(&mut self) -> String {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                self.buf.drain(..end + 4);
                return head;
            }
            self.fill().expect("read head");
        }
    }

    fn fill(&mut self) -> std::io::Result<()> {
        let mut chunk = [0u8; 65536];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Sends one masked frame.
    pub fn send_frame(&mut self, fin: bool, opcode: u8, payload: &[u8]) {
        self.stream
            .write_all(&masked_frame(fin, opcode, payload))
            .expect("send frame");
    }

    /// Sends a text message in one frame.
    pub fn send_text(&mut self, text: &str) {
        self.send_frame(true, 1, text.as_bytes());
    }

    /// Sends a Pusher event.
    pub fn send_json(&mut self, value: serde_json::Value) {
        self.send_text(&value.to_string());
    }

    /// Reads the next frame; `Err` at end of stream or timeout.
    pub fn try_read_frame(&mut self) -> std::io::Result<Frame> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Ok(frame);
            }
            self.fill()?;
        }
    }

    /// Reads the next frame or fails the test.
    pub fn read_frame(&mut self) -> Frame {
        self.try_read_frame().expect("a frame from the server")
    }

    /// Reads the next text frame as JSON.
    pub fn read_json(&mut self) -> serde_json::Value {
        let f = self.read_frame();
        assert_eq!(f.opcode, 1, "expected text, got {f:?}");
        f.json()
    }

    /// Reads frames until one has this event name; fails after `limit` frames.
    pub fn read_event(&mut self, event: &str) -> serde_json::Value {
        for _ in 0..100 {
            let v = self.read_json();
            if v["event"] == event {
                return v;
            }
        }
        panic!("no {event} in 100 frames");
    }

    /// Subscribes and waits for `subscription_succeeded`.
    pub fn subscribe(&mut self, channel: &str) {
        self.send_json(
            serde_json::json!({"event": "pusher:subscribe", "data": {"channel": channel}}),
        );
        let v = self.read_event("pusher_internal:subscription_succeeded");
        assert_eq!(v["channel"], channel);
    }

    /// Reads until the server closes the TCP stream; returns the close frame if one came.
    pub fn read_until_closed(&mut self) -> Option<Frame> {
        let mut close = None;
        while let Ok(f) = self.try_read_frame() {
            if f.opcode == 8 {
                close = Some(f);
            }
        }
        close
    }
}

/// A client frame with a fixed non-zero mask.
pub fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut out = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n < 65536 => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

fn parse_server_frame(buf: &[u8]) -> Option<(Frame, usize)> {
    if buf.len() < 2 {
        return None;
    }
    assert_eq!(buf[1] & 0x80, 0, "server frames are never masked");
    let (len, start) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b) as usize, 10)
        }
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    if buf.len() < start + len {
        return None;
    }
    let frame = Frame {
        fin: buf[0] & 0x80 != 0,
        rsv1: buf[0] & 0x40 != 0,
        opcode: buf[0] & 0x0f,
        payload: buf[start..start + len].to_vec(),
    };
    Some((frame, start + len))
}

/// Reads until a text frame matches `pred` (within `dur`): `Ok(frame)`, or `Err(all seen)`.
pub fn wait_event(
    ws: &mut Ws,
    dur: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value, Vec<Value>> {
    let deadline = Instant::now() + dur;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(seen);
        }
        ws.stream
            .set_read_timeout(Some(left.min(Duration::from_millis(100))))
            .expect("timeout");
        match ws.try_read_frame() {
            Ok(f) if f.opcode == 1 => {
                let v = f.json();
                if pred(&v) {
                    return Ok(v);
                }
                seen.push(v);
            }
            Ok(f) => seen.push(json!({"non_text_frame": f.opcode, "close": f.close_code()})),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return Err(seen),
        }
    }
}

/// Reads text frames for `dur` (or until the stream ends) and returns them.
pub fn frames_for(ws: &mut Ws, dur: Duration) -> Vec<Value> {
    match wait_event(ws, dur, |_| false) {
        Ok(_) => unreachable!("the predicate never matches"),
        Err(seen) => seen,
    }
}

pub fn user_ids(v: &Value) -> Vec<String> {
    let mut ids: Vec<String> = v["users"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|u| u["id"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids
}

/// Waits (at most 10 s) until a publish on `a` reaches a subscriber on `b`.
pub fn wait_linked(a: &Server, b: &Server) {
    let channel = format!("link-probe-{}-{}", a.port, b.port);
    let (mut probe, _) = Ws::pusher(b.port);
    probe.subscribe(&channel);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let body = json!({"name": "probe", "channel": channel, "data": "x"}).to_string();
        assert_eq!(rest::post(a.port, "/apps/app-id/events", &body).0, 200);
        if wait_event(&mut probe, Duration::from_millis(200), |v| {
            v["event"] == "probe"
        })
        .is_ok()
        {
            return;
        }
    }
    panic!(
        "node :{} never reached node :{} through redis",
        a.port, b.port
    );
}

/// Joins a presence channel as `user` (`user_info` `{name: user}`) and asserts it succeeded.
pub fn join_presence(ws: &mut Ws, socket_id: &str, channel: &str, user: &str) {
    let data = json!({"user_id": user, "user_info": {"name": user}}).to_string();
    let auth = format!(
        "{}:{}",
        rest::KEY,
        rest::hmac_hex(rest::SECRET, &format!("{socket_id}:{channel}:{data}"))
    );
    ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth, "channel_data": data}}));
    let reply = wait_event(ws, Duration::from_secs(5), |v| v["channel"] == channel)
        .unwrap_or_else(|seen| panic!("{user} got no answer joining {channel}: {seen:?}"));
    assert_eq!(
        reply["event"], "pusher_internal:subscription_succeeded",
        "{reply}"
    );
}

/// A socket on `port` signed in as `user` (`pusher:signin`), asserting it succeeded.
pub fn signed_in(port: u16, user: &str) -> Ws {
    let (mut ws, socket_id) = Ws::pusher(port);
    let user_data = json!({"id": user}).to_string();
    let auth = format!(
        "{}:{}",
        rest::KEY,
        rest::hmac_hex(rest::SECRET, &format!("{socket_id}::user::{user_data}"))
    );
    ws.send_json(json!({"event": "pusher:signin", "data": {"user_data": user_data, "auth": auth}}));
    let ok = wait_event(&mut ws, Duration::from_secs(5), |v| {
        v["event"] == "pusher:signin_success" || v["event"] == "pusher:error"
    })
    .unwrap_or_else(|seen| panic!("no answer to {user}'s signin: {seen:?}"));
    assert_eq!(ok["event"], "pusher:signin_success", "{ok}");
    ws
}

/// Subscribes to a private channel with a valid signature and asserts it succeeded.
pub fn subscribe_private(ws: &mut Ws, socket_id: &str, channel: &str) {
    let auth = format!(
        "{}:{}",
        rest::KEY,
        rest::hmac_hex(rest::SECRET, &format!("{socket_id}:{channel}"))
    );
    ws.send_json(json!({"event": "pusher:subscribe", "data": {"channel": channel, "auth": auth}}));
    let reply = wait_event(ws, Duration::from_secs(5), |v| v["channel"] == channel)
        .unwrap_or_else(|seen| panic!("no answer to subscribing {channel}: {seen:?}"));
    assert_eq!(
        reply["event"], "pusher_internal:subscription_succeeded",
        "{reply}"
    );
}
