//! The HTTP/1.1 bytes of a webhook request and the status line of its answer, sans-IO.
//!
//! A webhook's request head (request line, `Host`, fixed and custom headers) is rendered once
//! when the sender starts; each batch appends its `X-Pusher-Signature`, `Content-Length` and
//! body, and the result is sent unchanged by every attempt, so a retry carries the same
//! `time_ms` and signature, as Pusher's do.

use http::Uri;

/// Headers the sender owns; a webhook's custom header with one of these names is skipped
/// (Soketi also lets custom headers never override the `X-Pusher-*` ones).
const RESERVED: [&str; 7] = [
    "host",
    "content-length",
    "content-type",
    "connection",
    "transfer-encoding",
    "x-pusher-key",
    "x-pusher-signature",
];

/// Longest status line and headers read before the answer is called malformed.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;

/// Where a webhook can be sent, or why it cannot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    /// `https://` is not implemented yet: events for this webhook are counted as failed
    /// (and unsupported). Use an `http://` URL, e.g. through a local TLS-terminating proxy.
    #[error("https:// webhook URLs are not supported yet")]
    Https,
    /// The URL has no host, a bad port, credentials, or another scheme: fix the config.
    #[error("invalid webhook URL: {0}")]
    Invalid(&'static str),
}

/// A parsed `http://` webhook URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    /// Host to connect to (a name, or an IP without brackets).
    pub host: String,
    /// TCP port, 80 unless given.
    pub port: u16,
    /// The `Host` header value: host, with `:port` when not 80.
    pub authority: String,
    /// Path and query of the request line, `/` when empty.
    pub path: String,
}

/// Parses a webhook URL; only `http://` is deliverable for now.
pub fn parse_url(url: &str) -> Result<HttpTarget, UrlError> {
    let uri: Uri = url.parse().map_err(|_| UrlError::Invalid("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(UrlError::Https),
        _ => return Err(UrlError::Invalid("the scheme must be http:// or https://")),
    }
    let authority = uri.authority().ok_or(UrlError::Invalid("no host"))?;
    if authority.as_str().contains('@') {
        return Err(UrlError::Invalid(
            "credentials in the URL are not supported",
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(UrlError::Invalid("no host"));
    }
    // The authority is `host[:port]` (no credentials, checked above); `Authority::port`
    // reads an out-of-range port as none, so parse it here.
    let port = match authority.as_str().get(host.len()..) {
        Some("") => 80,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|p| p.parse::<u16>().ok())
            .ok_or(UrlError::Invalid("bad port"))?,
        None => return Err(UrlError::Invalid("no host")),
    };
    let authority = if port == 80 {
        host.to_owned()
    } else {
        format!("{host}:{port}")
    };
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    Ok(HttpTarget {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned(),
        port,
        authority,
        path,
    })
}

/// The part of every request to `target` that does not depend on the body: request line,
/// `Host`, `Content-Type`, `X-Pusher-Key`, and the custom headers (reserved names and values
/// that would break the header block are skipped).
#[must_use]
pub fn render_head(target: &HttpTarget, app_key: &str, custom: &[(String, String)]) -> Vec<u8> {
    let mut head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nAccept: application/json\r\nUser-Agent: corecast-webhooks/{}\r\nX-Pusher-Key: {}\r\n",
        target.path,
        target.authority,
        env!("CARGO_PKG_VERSION"),
        app_key
    );
    for (name, value) in custom {
        let reserved = RESERVED.iter().any(|r| name.eq_ignore_ascii_case(r));
        let valid = !name.is_empty()
            && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
            && !value.bytes().any(|b| b == b'\r' || b == b'\n');
        if !reserved && valid {
            head.push_str(name);
            head.push_str(": ");
            head.push_str(value);
            head.push_str("\r\n");
        }
    }
    head.into_bytes()
}

/// The whole request: `head`, then `X-Pusher-Signature`, `Content-Length`,
/// `Connection: close`, and the body.
#[must_use]
pub fn build_request(head: &[u8], signature: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len() + body.len() + 128);
    out.extend_from_slice(head);
    out.extend_from_slice(b"X-Pusher-Signature: ");
    out.extend_from_slice(signature.as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\nConnection: close\r\n\r\n");
    out.extend_from_slice(body);
    out
}

/// Why an answer could not be read as an HTTP/1.x response.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed HTTP response from the webhook receiver")]
pub struct MalformedResponse;

/// Reads the status code from the start of a response: `Ok(None)` until the status line is
/// complete.
pub fn parse_status(buf: &[u8]) -> Result<Option<u16>, MalformedResponse> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return if buf.len() > MAX_RESPONSE_HEAD {
            Err(MalformedResponse)
        } else {
            Ok(None)
        };
    };
    let line = &buf[..end];
    let rest = line
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| line.strip_prefix(b"HTTP/1.0 "))
        .ok_or(MalformedResponse)?;
    let code = rest.get(..3).ok_or(MalformedResponse)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ') {
        return Err(MalformedResponse);
    }
    let code = code.iter().fold(0u16, |n, d| n * 10 + u16::from(d - b'0'));
    Ok(Some(code))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_urls_give_host_port_and_path() {
        let t = parse_url("http://hooks.example.com/pusher/webhook?x=1").ok();
        assert_eq!(
            t,
            Some(HttpTarget {
                host: "hooks.example.com".into(),
                port: 80,
                authority: "hooks.example.com".into(),
                path: "/pusher/webhook?x=1".into(),
            })
        );
        let t = parse_url("http://127.0.0.1:8080").ok();
        assert_eq!(
            t.map(|t| (t.host, t.port, t.authority, t.path)),
            Some((
                "127.0.0.1".into(),
                8080,
                "127.0.0.1:8080".into(),
                "/".into()
            ))
        );
        let t = parse_url("http://[::1]:9000/h").ok();
        assert_eq!(
            t.map(|t| (t.host, t.authority)),
            Some(("::1".into(), "[::1]:9000".into()))
        );
    }

    #[test]
    fn https_and_broken_urls_are_refused_with_a_reason() {
        assert_eq!(parse_url("https://example.com/h"), Err(UrlError::Https));
        assert!(matches!(parse_url("ftp://x/"), Err(UrlError::Invalid(_))));
        assert!(matches!(parse_url("not a url"), Err(UrlError::Invalid(_))));
        assert!(matches!(
            parse_url("http://u:p@example.com/"),
            Err(UrlError::Invalid(_))
        ));
        assert!(matches!(
            parse_url("http://example.com:99999/"),
            Err(UrlError::Invalid(_))
        ));
    }

    #[test]
    fn request_has_pusher_headers_custom_headers_and_exact_body() {
        let target = parse_url("http://127.0.0.1:9/hook").unwrap_or_else(|e| panic!("{e}"));
        let custom = vec![
            ("X-Token".to_owned(), "t0k".to_owned()),
            ("X-Pusher-Key".to_owned(), "forged".to_owned()),
            ("Content-Length".to_owned(), "1".to_owned()),
            ("X-Evil".to_owned(), "a\r\nX-Injected: 1".to_owned()),
        ];
        let head = render_head(&target, "app-key", &custom);
        let req = build_request(&head, "abc123", br#"{"time_ms":1,"events":[]}"#);

        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut parsed = httparse::Request::new(&mut headers);
        let status = parsed.parse(&req).unwrap_or(httparse::Status::Partial);
        let httparse::Status::Complete(head_len) = status else {
            panic!("request head is incomplete");
        };
        assert_eq!(parsed.method, Some("POST"));
        assert_eq!(parsed.path, Some("/hook"));
        let get = |name: &str| -> Vec<String> {
            parsed
                .headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .collect()
        };
        assert_eq!(get("Host"), ["127.0.0.1:9"]);
        assert_eq!(get("Content-Type"), ["application/json"]);
        assert_eq!(get("X-Pusher-Key"), ["app-key"]);
        assert_eq!(get("X-Pusher-Signature"), ["abc123"]);
        assert_eq!(get("X-Token"), ["t0k"]);
        assert_eq!(get("Content-Length"), ["25"]);
        assert!(get("X-Evil").is_empty() && get("X-Injected").is_empty());
        assert_eq!(&req[head_len..], br#"{"time_ms":1,"events":[]}"#);
    }

    #[test]
    fn status_line_is_read_once_complete() {
        assert_eq!(parse_status(b""), Ok(None));
        assert_eq!(parse_status(b"HTTP/1.1 20"), Ok(None));
        assert_eq!(parse_status(b"HTTP/1.1 200 OK\r\n"), Ok(Some(200)));
        assert_eq!(
            parse_status(b"HTTP/1.0 500 Oops\r\nA: b\r\n"),
            Ok(Some(500))
        );
        assert_eq!(parse_status(b"HTTP/1.1 204\r\n"), Ok(Some(204)));
        assert_eq!(parse_status(b"SSH-2.0-OpenSSH\r\n"), Err(MalformedResponse));
        assert_eq!(parse_status(b"HTTP/1.1 2x0 OK\r\n"), Err(MalformedResponse));
        assert_eq!(
            parse_status(&[b'a'; MAX_RESPONSE_HEAD + 1]),
            Err(MalformedResponse)
        );
    }
}
