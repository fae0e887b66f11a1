//! A connection's reader task: HTTP/1.1 requests (REST API, health) with keep-alive,
//! until an upgrade on `/app/{key}` turns it into a Pusher WebSocket.
//!
//! Reads wait for readiness and then copy into the shard's one scratch buffer, so an idle
//! connection holds no read buffer of its own.

use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use monoio::net::TcpStream;
use monoio_codec::{Decoded, Decoder as _};
use monoio_http::common::request::RequestHead;
use monoio_http::h1::codec::decoder::RequestHeadDecoder;

use super::conn::{self, Conn, Flushed, Outbound, write_all};
use super::tls::Tls;
use super::{Shard, session};
use crate::app::AppIdx;
use crate::app::manager::Outcome;
use crate::config::AppConfig;
use crate::http::{self, Response};
use crate::metrics::Counter;
use crate::protocol::{ErrorCode, PROTOCOL_VERSION, connection_established, error_frame};
use crate::registry::ConnKey;
use crate::ws::{self, close_frame};

/// Largest request head accepted; larger gets 431.
const MAX_HEAD_BYTES: usize = 16 * 1024;
/// How long an HTTP connection may sit idle or trickle a request before it is closed, so
/// idle keep-alive and slowloris sockets do not pile up.
const HTTP_IDLE: std::time::Duration = std::time::Duration::from_secs(30);

/// `read_more` bounded by [`HTTP_IDLE`]; false on timeout too.
async fn read_within(link: &mut Link, shard: &Shard, buf: &mut BytesMut) -> bool {
    monoio::time::timeout(HTTP_IDLE, link.read_more(shard, buf))
        .await
        .unwrap_or(false)
}

/// The socket of a connection in its HTTP phase, with TLS when the server has it.
struct Link {
    stream: TcpStream,
    tls: Option<Box<Tls>>,
}

impl Link {
    /// Reads more (plaintext) bytes into `buf`; false at end of stream or on error.
    async fn read_more(&mut self, shard: &Shard, buf: &mut BytesMut) -> bool {
        loop {
            if self.stream.readable(false).await.is_err() {
                return false;
            }
            let mut scratch = shard.take_scratch();
            let got = conn::recv_now(self.stream.as_raw_fd(), &mut scratch);
            let mut broken = false;
            if let Ok(n) = got {
                match self.tls.as_mut() {
                    Some(tls) => {
                        let mut plain = Vec::new();
                        broken = tls.read(&scratch[..n], &mut plain).is_err();
                        buf.extend_from_slice(&plain);
                    }
                    None => buf.extend_from_slice(&scratch[..n]),
                }
            }
            shard.put_scratch(scratch);
            // Handshake records (or an alert) to answer.
            if self.tls.as_ref().is_some_and(|t| t.has_pending())
                && self.write_all(&[]).await.is_err()
            {
                return false;
            }
            match got {
                _ if broken => return false,
                Ok(0) => return false,
                Ok(_) if self.tls.is_some() && buf.is_empty() => continue,
                Ok(_) => return true,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return false,
            }
        }
    }

    /// Writes all of `data` (encrypted on TLS), waiting for the socket when it is full.
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        let Some(tls) = self.tls.as_mut() else {
            return write_all(&self.stream, data).await;
        };
        tls.write(data);
        loop {
            match tls.send(self.stream.as_raw_fd()) {
                Flushed::Done => return Ok(()),
                Flushed::Blocked => self.stream.writable(false).await?,
                Flushed::Failed => return Err(std::io::ErrorKind::BrokenPipe.into()),
            }
        }
    }
}

/// Serves one accepted socket until it closes.
pub(super) async fn handle_connection(shard: Rc<Shard>, stream: TcpStream) {
    let tls = match &shard.tls {
        Some(config) => match Tls::new(Arc::clone(config)) {
            Ok(t) => Some(Box::new(t)),
            Err(_) => return,
        },
        None => None,
    };
    let mut link = Link { stream, tls };
    let mut buf = BytesMut::new();
    loop {
        let buffered = buf.len();
        let head = match RequestHeadDecoder.decode(&mut buf) {
            Ok(Decoded::Some(head)) => head,
            Ok(_) => {
                if buf.len() > MAX_HEAD_BYTES {
                    let _ = respond(
                        &mut link,
                        &http::error(431, "Request header too large."),
                        false,
                    )
                    .await;
                    return;
                }
                if !read_within(&mut link, &shard, &mut buf).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                let _ = respond(
                    &mut link,
                    &http::error(400, "Malformed HTTP request."),
                    false,
                )
                .await;
                return;
            }
        };
        if http::is_upgrade(&head) {
            // The head and its read buffer are not needed once the upgrade is decided; an
            // idle WebSocket should hold nothing of its HTTP past.
            drop(buf);
            return upgrade(shard, link, head).await;
        }
        let keep_alive = http::keep_alive(&head);
        let len = match http::body_length(&head, shard.config.max_http_body_bytes) {
            Ok(len) => len,
            Err(resp) => {
                let _ = respond(&mut link, &resp, false).await;
                return;
            }
        };
        while buf.len() < len {
            if !read_within(&mut link, &shard, &mut buf).await {
                return;
            }
        }
        let head_len = buffered.saturating_sub(buf.len().min(buffered));
        let mut body = buf.split_to(len);
        shard.http_in_flight.set(shard.http_in_flight.get() + 1);
        let resp = http::handle(&shard, &head, &mut body).await;
        shard.http_in_flight.set(shard.http_in_flight.get() - 1);
        shard.flush_dirty();
        let keep_alive = keep_alive && !shard.shutting_down();
        let bytes = resp.encode(keep_alive);
        if shard.config.debug {
            eprintln!(
                "corecast: shard {} {} {} -> {}",
                shard.id,
                head.method,
                head.uri.path(),
                resp.status
            );
        }
        let app = http::app_of(&shard, &head).map(|a| a.0 as usize);
        shard
            .metrics
            .add_http(app, (head_len + len) as u64, bytes.len() as u64);
        if link.write_all(&bytes).await.is_err() || !keep_alive {
            return;
        }
        if buf.is_empty() {
            // Free the request buffer between requests on an idle keep-alive connection.
            buf = BytesMut::new();
        }
    }
}

async fn respond(link: &mut Link, resp: &Response, keep_alive: bool) -> std::io::Result<()> {
    link.write_all(&resp.encode(keep_alive)).await
}

/// Completes the WebSocket handshake, checks app and protocol version, then runs the
/// Pusher session until the socket closes.
async fn upgrade(shard: Rc<Shard>, mut link: Link, head: RequestHead) {
    let Some(key) = http::route_path(&shard.config.path_prefix, head.uri.path())
        .and_then(|p| p.strip_prefix("/app/"))
        .filter(|k| !k.is_empty() && !k.contains('/'))
        .map(str::to_owned)
    else {
        let _ = respond(&mut link, &http::error(404, "Not found."), false).await;
        return;
    };
    let deflate = shard
        .config
        .ws_compression
        .then(|| ws::negotiate(&head.headers))
        .flatten();
    let response = match ws::upgrade_response_with(
        &head.method,
        head.version,
        &head.headers,
        deflate.as_ref(),
    ) {
        Ok(r) => r,
        Err(e) => {
            let mut resp = http::error(e.status(), &e.to_string());
            if e.status() == 426 {
                resp.headers.push(("Sec-WebSocket-Version", "13".into()));
            }
            let _ = respond(&mut link, &resp, false).await;
            return;
        }
    };
    if link.write_all(&response).await.is_err() {
        return;
    }
    let query = crate::auth::parse_query(head.uri.query().unwrap_or(""));
    // Browsers always send `Origin`; server-side clients usually do not.
    let origin = head
        .headers
        .get("origin")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    drop(head);
    let mut leased_slot = false;
    let (app, refusal) = match shard.app_by_key(&key).await {
        Outcome::Missing => (None, Some(ErrorCode::AppDoesNotExist)),
        Outcome::Unavailable => (None, Some(ErrorCode::AppsUnavailable)),
        Outcome::Found(idx) => {
            let (enabled, max_connections, origin_refused) = {
                let cfg = shard.apps.get(idx);
                (
                    cfg.enabled,
                    cfg.max_connections,
                    check_origin(&shard, &cfg, origin.as_deref()),
                )
            };
            if !enabled {
                (None, Some(ErrorCode::AppDisabled))
            } else if let Some(code) = check_protocol(&query).or(origin_refused) {
                (Some(idx), Some(code))
            } else {
                match admit(&shard, idx, max_connections).await {
                    Ok(leased) => {
                        leased_slot = leased;
                        (Some(idx), None)
                    }
                    Err(code) => (Some(idx), Some(code)),
                }
            }
        }
    };
    let (Some(app), None) = (app, refusal) else {
        let code = refusal.unwrap_or(ErrorCode::AppDoesNotExist);
        shard.metrics.inc(Counter::ConnectionsRejected, 1);
        let message = (code == ErrorCode::Unauthorized).then_some(ORIGIN_REFUSED);
        let mut frames = error_frame(code, message).to_vec();
        frames.extend_from_slice(&close_frame(code.code(), code.message()));
        let _ = link.write_all(&frames).await;
        conn::shutdown(link.stream.as_raw_fd(), libc::SHUT_WR);
        // Let the client read the close before the socket goes away.
        let _ = monoio::time::timeout(
            std::time::Duration::from_secs(2),
            link.stream.readable(false),
        )
        .await;
        return;
    };
    let Link { stream, tls } = link;
    let (serial, socket_id) = shard.next_socket_id();
    let stream = Rc::new(stream);
    let now = Instant::now();
    let key = shard.conns.borrow_mut().insert(Conn {
        serial,
        socket_id,
        app,
        stream: Rc::clone(&stream),
        out: Outbound::default(),
        dirty: false,
        writer_active: false,
        closing: None,
        last_seen: now,
        ping_sent: None,
        channels: Vec::new(),
        user_id: None,
        authorized: false,
        opened_at: now,
        client_events: (now, 0),
        leased_slot,
        tls,
        deflate,
    });
    if shard.config.debug {
        eprintln!(
            "corecast: shard {} connection {socket_id} opened (app {})",
            shard.id,
            shard.apps.get(app).id
        );
    }
    shard.metrics.inc_new_connection(app.0 as usize);
    shard.metrics.add_connected(app.0 as usize, 1);
    let timeout = shard.config.activity_timeout.as_secs();
    shard.send_to(key, connection_established(socket_id, timeout));
    shard.flush_dirty();
    // The session gets a task of its own, so the HTTP task (with its request-sized
    // state) ends here and an idle WebSocket keeps only what the session needs.
    monoio::spawn(websocket(shard, key, stream));
}

/// A WebSocket's task: run the session, then leave every channel.
async fn websocket(shard: Rc<Shard>, key: ConnKey, stream: Rc<TcpStream>) {
    session::run(&shard, key, &stream).await;
    session::cleanup(&shard, key);
}

/// Admission: shutdown, the handshake rate, the server's connection cap (4200 / 4100),
/// then the app's connection quota (4004), over the cluster with the redis adapter.
/// Takes the quotas it passes; `cleanup` gives them back. `Ok(true)`: a slot of the
/// cluster-wide quota was taken.
async fn admit(
    shard: &Rc<Shard>,
    app: AppIdx,
    max_connections: Option<u64>,
) -> Result<bool, ErrorCode> {
    if shard.shutting_down() {
        return Err(ErrorCode::ReconnectImmediately);
    }
    if !shard.admit_handshake() {
        shard.metrics.inc(Counter::HandshakesRejected, 1);
        return Err(ErrorCode::OverCapacity);
    }
    let server_max =
        (shard.config.max_connections > 0).then_some(shard.config.max_connections as u64);
    if !shard.server.connections.try_add(server_max) {
        return Err(ErrorCode::OverCapacity);
    }
    let usage = shard.apps.usage(app);
    if !usage.connections.try_add(max_connections) {
        shard.server.connections.release();
        return Err(ErrorCode::OverConnectionQuota);
    }
    if max_connections.is_some() && shard.cluster_quota() {
        if !shard.take_connection_slot(app).await {
            usage.connections.release();
            shard.server.connections.release();
            return Err(ErrorCode::OverConnectionQuota);
        }
        return Ok(true);
    }
    Ok(false)
}

/// What a handshake from an `Origin` the app does not allow is told, with 4009.
const ORIGIN_REFUSED: &str = "Origin not allowed.";

/// An `Origin` the app's `allowedOrigins` does not allow is 4009 (Pusher's code for an
/// unauthorized connection), counted.
fn check_origin(shard: &Shard, cfg: &AppConfig, origin: Option<&str>) -> Option<ErrorCode> {
    if cfg.origin_allowed(origin) {
        return None;
    }
    shard.metrics.inc(Counter::OriginsRejected, 1);
    Some(ErrorCode::Unauthorized)
}

/// `protocol` must be a number of at least 7: missing or older is 4007, not a number 4006.
fn check_protocol(query: &[(String, String)]) -> Option<ErrorCode> {
    let Some((_, v)) = query.iter().find(|(k, _)| k == "protocol") else {
        return Some(ErrorCode::UnsupportedProtocolVersion);
    };
    match v.parse::<u32>() {
        Ok(n) if n >= PROTOCOL_VERSION => None,
        Ok(_) => Some(ErrorCode::UnsupportedProtocolVersion),
        Err(_) => Some(ErrorCode::InvalidVersionFormat),
    }
}

/// The raw fd of a stream (for direct non-blocking syscalls).
pub(super) fn fd_of(stream: &TcpStream) -> RawFd {
    stream.as_raw_fd()
}
