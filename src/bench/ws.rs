//! A minimal Pusher WebSocket client: handshake, subscribe, then frames out of a
//! reusable buffer. Parses only what the load generator needs.

use std::cell::RefCell;
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt, CancelHandle, CancelableAsyncReadRent};
use monoio::net::TcpStream;

use corecast::ws::Inflater;

/// Initial read buffer per connection; grows for larger frames.
const READ_BUF_BYTES: usize = 4096;
/// Minimum free space before a read.
const MIN_FREE_BYTES: usize = 1024;
/// Client frames must be masked; any fixed key will do.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xa;

/// One subscribed connection.
pub struct Conn {
    pub stream: TcpStream,
    /// Bytes read but not yet parsed (a frame may follow the handshake in the same read).
    pub frames: FrameBuf,
}

/// Why opening a connection failed; the category is what the report counts.
#[derive(Debug)]
pub struct OpenError {
    pub stage: &'static str,
    pub detail: String,
}

impl OpenError {
    fn new(stage: &'static str, detail: impl Into<String>) -> OpenError {
        OpenError {
            stage,
            detail: detail.into(),
        }
    }
}

/// Whether clients offer permessage-deflate (`--compression`); set once before any opens.
static OFFER_DEFLATE: AtomicBool = AtomicBool::new(false);

/// Makes every later [`open`] offer permessage-deflate and insist on the server's answer.
pub fn offer_deflate(on: bool) {
    OFFER_DEFLATE.store(on, Ordering::Relaxed);
}

/// The largest message a client inflates (the server's compressed frames are events).
const MAX_INFLATED_BYTES: usize = 16 << 20;

thread_local! {
    /// One inflater per client thread, reset per message (no context takeover).
    static INFLATER: RefCell<Inflater> = RefCell::new(Inflater::default());
}

/// Inflates a compressed message's payload and hands the text to `f`; `None` when it
/// is not valid deflate.
pub fn with_inflated<R>(payload: &[u8], f: impl FnOnce(&[u8]) -> R) -> Option<R> {
    INFLATER.with_borrow_mut(|inflater| {
        inflater
            .inflate(payload, MAX_INFLATED_BYTES)
            .ok()
            .map(|text| f(text))
    })
}

/// A frame located in a `FrameBuf`.
#[derive(Clone, Debug)]
pub struct FrameRef {
    pub fin: bool,
    /// RSV1: a permessage-deflate compressed message.
    pub rsv1: bool,
    pub opcode: u8,
    pub payload: Range<usize>,
}

/// Received bytes; `[pos..len)` is not parsed yet.
pub struct FrameBuf {
    pub buf: Vec<u8>,
    pos: usize,
}

impl FrameBuf {
    pub fn new() -> FrameBuf {
        FrameBuf {
            buf: Vec::with_capacity(READ_BUF_BYTES),
            pos: 0,
        }
    }

    /// The next complete frame, or `None` if more bytes are needed. Unmasks a
    /// masked payload in place (servers must not mask, but it costs nothing).
    pub fn next_frame(&mut self) -> Option<FrameRef> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return None;
        }
        let (fin, opcode, masked) = (b[0] & 0x80 != 0, b[0] & 0x0f, b[1] & 0x80 != 0);
        let rsv1 = b[0] & 0x40 != 0;
        let (mut header, len): (usize, usize) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (4, u16::from_be_bytes([b[2], b[3]]) as usize),
            127 if b.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&b[2..10]);
                (
                    10,
                    usize::try_from(u64::from_be_bytes(n)).unwrap_or(usize::MAX / 2),
                )
            }
            126 | 127 => return None,
            n => (2, n as usize),
        };
        let key_at = header;
        if masked {
            header += 4;
        }
        let total = header.saturating_add(len);
        if b.len() < total {
            self.reserve_for(total);
            return None;
        }
        let start = self.pos + header;
        if masked {
            let mut key = [0u8; 4];
            key.copy_from_slice(&self.buf[self.pos + key_at..self.pos + key_at + 4]);
            for (i, byte) in self.buf[start..start + len].iter_mut().enumerate() {
                *byte ^= key[i & 3];
            }
        }
        self.pos += total;
        Some(FrameRef {
            fin,
            rsv1,
            opcode,
            payload: start..start + len,
        })
    }

    /// Gives the buffer back, for connections that will only be held open.
    pub fn release(&mut self) {
        self.buf = Vec::new();
        self.pos = 0;
    }

    pub fn bytes(&self, r: &Range<usize>) -> &[u8] {
        &self.buf[r.clone()]
    }

    /// Drops parsed bytes and keeps room for the next read.
    fn compact(&mut self) {
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > 0 && self.buf.capacity() - self.buf.len() < MIN_FREE_BYTES {
            self.buf.copy_within(self.pos.., 0);
            self.buf.truncate(self.buf.len() - self.pos);
            self.pos = 0;
        }
        if self.buf.capacity() - self.buf.len() < MIN_FREE_BYTES {
            self.buf.reserve(MIN_FREE_BYTES);
        }
    }

    /// A frame of `total` bytes is coming: make sure it fits.
    fn reserve_for(&mut self, total: usize) {
        let have = self.buf.capacity() - self.pos;
        if have < total {
            self.buf.reserve(total - (self.buf.len() - self.pos));
        }
    }

    /// Reads more bytes from `stream`, optionally cancelable. Ok(0) is EOF.
    pub async fn fill(
        &mut self,
        stream: &mut TcpStream,
        cancel: Option<&CancelHandle>,
    ) -> io::Result<usize> {
        self.compact();
        let buf = std::mem::take(&mut self.buf);
        let (len, cap) = (buf.len(), buf.capacity());
        let slice = buf.slice_mut(len..cap);
        let (res, slice) = match cancel {
            Some(c) => stream.cancelable_read(slice, c.clone()).await,
            None => stream.read(slice).await,
        };
        self.buf = slice.into_inner();
        res
    }
}

/// A masked client frame.
pub fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 14);
    f.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= u16::MAX as usize => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
    f
}

/// The value of `"event":"..."` in a Pusher message.
pub fn event_name(msg: &[u8]) -> Option<&[u8]> {
    let at = find(msg, b"\"event\":\"")? + 9;
    let len = msg[at..].iter().position(|&b| b == b'"')?;
    Some(&msg[at..at + len])
}

/// Naive substring search: messages are a couple of hundred bytes.
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    let first = *needle.first()?;
    let last_start = hay.len().checked_sub(needle.len())?;
    let mut i = 0;
    while i <= last_start {
        let off = hay[i..=last_start].iter().position(|&b| b == first)?;
        i += off;
        if &hay[i..i + needle.len()] == needle {
            return Some(i);
        }
        i += 1;
    }
    None
}

/// The app's key and secret, for signing subscriptions to private channels the way an
/// app's auth endpoint does (`key:HMAC-SHA256(secret, "socket_id:channel")`).
#[derive(Clone, Debug)]
pub struct Auth {
    pub key: String,
    pub secret: String,
}

impl Auth {
    /// The `auth` field of a private channel's `pusher:subscribe`.
    pub fn sign(&self, socket_id: &str, channel: &str) -> String {
        let mac = hmac_hex(&self.secret, &format!("{socket_id}:{channel}"));
        format!("{}:{mac}", self.key)
    }
}

/// Hex HMAC-SHA256 of `message` with `secret`, as Pusher signs REST requests and
/// channel subscriptions.
pub fn hmac_hex(secret: &str, message: &str) -> String {
    use hmac::{Hmac, KeyInit, Mac};
    // HMAC accepts keys of any length.
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key");
    mac.update(message.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The socket id in a `pusher:connection_established` message, whose `data` is a
/// JSON-encoded string: `"data":"{\"socket_id\":\"123.456\",...}"`.
pub fn socket_id(msg: &[u8]) -> Option<&str> {
    const KEY: &[u8] = br#"socket_id\":\""#;
    let at = find(msg, KEY)? + KEY.len();
    let len = msg[at..].iter().position(|&b| b == b'\\' || b == b'"')?;
    std::str::from_utf8(&msg[at..at + len]).ok()
}

/// Connects, upgrades, waits for `pusher:connection_established`, subscribes to
/// `channel` (signed with `auth` for `private-` channels) and waits for
/// `pusher_internal:subscription_succeeded`.
pub async fn open(
    addr: SocketAddr,
    path: &str,
    channel: &str,
    auth: Option<&Auth>,
) -> Result<Conn, OpenError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| OpenError::new("connect", e.to_string()))?;
    let _ = stream.set_nodelay(true);
    let deflate = OFFER_DEFLATE.load(Ordering::Relaxed);
    let offer = if deflate {
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    } else {
        ""
    };
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: bG9hZGdlbi1rZXktMDAwMA==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
    );
    let (res, _) = stream.write_all(req.into_bytes()).await;
    res.map_err(|e| OpenError::new("handshake", format!("write: {e}")))?;

    let mut frames = FrameBuf::new();
    loop {
        let n = frames
            .fill(&mut stream, None)
            .await
            .map_err(|e| OpenError::new("handshake", format!("read: {e}")))?;
        if n == 0 {
            return Err(OpenError::new(
                "handshake",
                "closed before the 101 response",
            ));
        }
        if let Some(end) = find(&frames.buf, b"\r\n\r\n") {
            let head = &frames.buf[..end];
            if !head.starts_with(b"HTTP/1.1 101") {
                let line = head.split(|&b| b == b'\r').next().unwrap_or(b"");
                return Err(OpenError::new(
                    "handshake",
                    format!("expected 101, got {:?}", String::from_utf8_lossy(line)),
                ));
            }
            if deflate && find(&head.to_ascii_lowercase(), b"permessage-deflate").is_none() {
                return Err(OpenError::new(
                    "handshake",
                    "the server did not agree to permessage-deflate",
                ));
            }
            frames.pos = end + 4;
            break;
        }
        if frames.buf.len() > 16 * 1024 {
            return Err(OpenError::new("handshake", "response head over 16 KiB"));
        }
    }

    let established =
        wait_event(&mut stream, &mut frames, b"pusher:connection_established").await?;
    let sub = match auth.filter(|_| channel.starts_with("private-")) {
        None => format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#),
        Some(auth) => {
            let id = socket_id(&established).ok_or_else(|| {
                OpenError::new(
                    "established",
                    format!("no socket_id in {}", String::from_utf8_lossy(&established)),
                )
            })?;
            format!(
                r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}","auth":"{}"}}}}"#,
                auth.sign(id, channel)
            )
        }
    };
    let (res, _) = stream
        .write_all(client_frame(OP_TEXT, sub.as_bytes()))
        .await;
    res.map_err(|e| OpenError::new("subscribe", format!("write: {e}")))?;
    wait_event(
        &mut stream,
        &mut frames,
        b"pusher_internal:subscription_succeeded",
    )
    .await?;
    Ok(Conn { stream, frames })
}

/// Reads frames until a text message with event `want`, returned; a `pusher:error`
/// or a close fails.
async fn wait_event(
    stream: &mut TcpStream,
    frames: &mut FrameBuf,
    want: &[u8],
) -> Result<Vec<u8>, OpenError> {
    let stage = if want == b"pusher:connection_established" {
        "established"
    } else {
        "subscribe"
    };
    loop {
        while let Some(f) = frames.next_frame() {
            let msg = frames.bytes(&f.payload);
            match f.opcode {
                OP_TEXT => {
                    let ev = event_name(msg).unwrap_or(b"");
                    if ev == want {
                        return Ok(msg.to_vec());
                    }
                    if ev == b"pusher:error" || ev == b"pusher:subscription_error" {
                        return Err(OpenError::new(stage, String::from_utf8_lossy(msg)));
                    }
                }
                OP_CLOSE => {
                    let code = close_code(msg);
                    return Err(OpenError::new(stage, format!("server closed with {code}")));
                }
                _ => {}
            }
        }
        let n = frames
            .fill(stream, None)
            .await
            .map_err(|e| OpenError::new(stage, format!("read: {e}")))?;
        if n == 0 {
            return Err(OpenError::new(stage, "server closed the TCP connection"));
        }
    }
}

/// The status code of a close frame payload (1005 when absent).
pub fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1005,
    }
}
