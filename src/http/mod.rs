//! The HTTP side of the port: health checks and the Pusher REST API, with Pusher's
//! statuses and Soketi's error body `{"error": "...", "code": N}`.

mod channels;
mod events;

#[cfg(feature = "bench")]
pub(crate) use events::encode_event;

use std::rc::Rc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use http::{Method, Version, header};
use monoio_http::common::request::RequestHead;

use crate::auth;
use crate::metrics::Counter;
use crate::shard::Shard;

/// A response ready to encode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Response {
    /// A JSON response.
    #[must_use]
    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self {
            status,
            content_type: "application/json",
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// A plain-text response.
    #[must_use]
    pub fn text(status: u16, body: &str) -> Self {
        Self {
            status,
            content_type: "text/plain",
            headers: Vec::new(),
            body: body.as_bytes().to_vec(),
        }
    }

    /// The response as HTTP/1.1 bytes.
    #[must_use]
    pub fn encode(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.body.len());
        let connection = if keep_alive { "keep-alive" } else { "close" };
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\nAccess-Control-Allow-Origin: *\r\n",
                self.status,
                reason(self.status),
                self.content_type,
                self.body.len(),
                connection
            )
            .as_bytes(),
        );
        for (name, value) in &self.headers {
            out.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(&self.body);
        out
    }
}

/// An error response with Soketi's body: `{"error": message, "code": status}`.
#[must_use]
pub fn error(status: u16, message: &str) -> Response {
    let body = serde_json::json!({ "error": message, "code": status });
    Response::json(status, body.to_string())
}

fn reason(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

/// `path` without the configured `SOKETI_PATH_PREFIX` (Soketi mounts every route under
/// it); `None` when a prefix is set and `path` is outside it.
#[must_use]
pub fn route_path<'p>(prefix: &str, path: &'p str) -> Option<&'p str> {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_empty() {
        return Some(path);
    }
    match path.strip_prefix(prefix) {
        Some(rest) if rest.starts_with('/') => Some(rest),
        Some("") => Some("/"),
        _ => None,
    }
}

/// The app a REST path names (`/apps/{id}/...`), for per-app HTTP metrics.
#[must_use]
pub fn app_of(shard: &Shard, head: &RequestHead) -> Option<crate::app::AppIdx> {
    let path = head.uri.path();
    let rest = &path[path.find("/apps/")? + "/apps/".len()..];
    let id = rest.split('/').next()?;
    shard.known_app_by_id(id).ok().map(|(idx, _)| idx)
}

/// Whether the request asks for a WebSocket upgrade.
#[must_use]
pub fn is_upgrade(head: &RequestHead) -> bool {
    head.headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Whether the connection stays open after this request.
#[must_use]
pub fn keep_alive(head: &RequestHead) -> bool {
    let connection = head
        .headers
        .get(header::CONNECTION)
        .and_then(|v| v.to_str().ok());
    let has = |token: &str| {
        connection.is_some_and(|c| c.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    match head.version {
        Version::HTTP_11 => !has("close"),
        _ => has("keep-alive"),
    }
}

/// The body length from `Content-Length`, refusing chunked bodies and bodies over `max`.
pub fn body_length(head: &RequestHead, max: usize) -> Result<usize, Response> {
    if head.headers.contains_key(header::TRANSFER_ENCODING) {
        return Err(error(
            411,
            "Chunked request bodies are not supported; send Content-Length.",
        ));
    }
    let Some(value) = head.headers.get(header::CONTENT_LENGTH) else {
        return Ok(0);
    };
    let len = value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .ok_or_else(|| error(400, "Invalid Content-Length."))?;
    if len > max {
        return Err(error(413, "The request body is too large."));
    }
    Ok(len)
}

/// Routes one request (not an upgrade) and returns its response. Publishing queues frames
/// on the shard and flushes them before any wait.
pub async fn handle(shard: &Rc<Shard>, head: &RequestHead, body: &mut BytesMut) -> Response {
    let signed_path = head.uri.path();
    // Health checks answer with or without the prefix, for load balancers.
    let path = route_path(&shard.config.path_prefix, signed_path).unwrap_or(match signed_path {
        "/" | "/ready" => signed_path,
        _ => "",
    });
    match (path, &head.method) {
        ("/ready", &Method::GET) if shard.shutting_down() => {
            return Response::text(503, "Shutting down");
        }
        ("/" | "/ready", &Method::GET) => return Response::text(200, "OK"),
        ("/" | "/ready", _) => return error(405, "Method not allowed."),
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/apps/") else {
        return error(404, "Not found.");
    };
    let (app_id, route) = rest.split_once('/').unwrap_or((rest, ""));
    let (app_idx, app) = match shard.app_by_id(app_id).await {
        Ok((idx, app)) if app.enabled => (idx, app),
        Err(crate::app::manager::Outcome::Unavailable) => {
            shard
                .metrics
                .inc(crate::metrics::Counter::AppLookupsRefused, 1);
            return error(503, "The app store does not answer; retry later.");
        }
        _ => return error(404, "App not found."),
    };
    let query = auth::parse_query(head.uri.query().unwrap_or(""));
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    if let Err(e) = auth::verify_rest_request(
        &app.key,
        &app.secret,
        head.method.as_str(),
        signed_path,
        &query,
        body,
        now,
    ) {
        return error(401, &e.to_string());
    }
    let segments: Vec<&str> = route.split('/').collect();
    let get = head.method == Method::GET;
    let post = head.method == Method::POST;
    if get && let Some(limit) = app.max_read_req_per_sec {
        // Over the cluster with the redis rate limiter; per node without it, or while
        // Redis is unreachable.
        let cluster = match shard.cluster_rates() {
            true => shard.take_rate(app_idx, crate::shard::Rate::Read, 1).await,
            false => None,
        };
        match cluster {
            Some(true) => {}
            Some(false) => return too_many(shard, 1, Counter::RateLimitedRead),
            None => {
                if let Err(retry) = shard
                    .apps
                    .usage(app_idx)
                    .read_requests
                    .try_acquire(now, limit)
                {
                    return too_many(shard, retry, Counter::RateLimitedRead);
                }
            }
        }
    }
    match segments.as_slice() {
        ["events"] if post => events::trigger(shard, app_idx, body).await,
        ["batch_events"] if post => events::trigger_batch(shard, app_idx, body).await,
        ["channels"] if get => channels::list(shard, app_idx, &query).await,
        ["channels", name] if get => channels::show(shard, app_idx, &decode(name), &query).await,
        ["channels", name, "users"] if get => channels::users(shard, app_idx, &decode(name)).await,
        ["users", user, "terminate_connections"] if post => {
            shard.terminate_user(app_idx, &decode(user));
            shard.flush_dirty();
            Response::json(200, "{}")
        }
        ["events" | "batch_events"] | ["channels", ..] | ["users", _, "terminate_connections"] => {
            error(405, "Method not allowed.")
        }
        _ => error(404, "Not found."),
    }
}

/// 429 with `Retry-After`, counted.
pub(crate) fn too_many(shard: &Shard, retry_after_secs: u64, kind: Counter) -> Response {
    shard.metrics.inc(kind, 1);
    let mut resp = error(429, "Too many requests for this app; slow down.");
    resp.headers
        .push(("Retry-After", retry_after_secs.to_string()));
    resp
}

/// A path segment with its percent-escapes decoded.
fn decode(segment: &str) -> String {
    auth::parse_query(&format!("x={segment}"))
        .pop()
        .map(|(_, v)| v)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::route_path;

    #[test]
    fn path_prefix_is_stripped_only_when_it_matches() {
        assert_eq!(route_path("", "/apps/a/events"), Some("/apps/a/events"));
        assert_eq!(
            route_path("/ws", "/ws/apps/a/events"),
            Some("/apps/a/events")
        );
        assert_eq!(route_path("/ws/", "/ws/app/key"), Some("/app/key"));
        assert_eq!(route_path("/ws", "/ws"), Some("/"));
        assert_eq!(route_path("/ws", "/wsx/app/key"), None);
        assert_eq!(route_path("/ws", "/apps/a/events"), None);
    }
}
