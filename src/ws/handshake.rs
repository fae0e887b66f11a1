//! The HTTP/1.1 upgrade to WebSocket (RFC 6455 4.2): checks the client's request head
//! and builds the `101 Switching Protocols` answer. No subprotocol is negotiated; the one
//! extension is permessage-deflate, when the caller agreed to it (`extension::negotiate`),
//! so the answer depends only on `Sec-WebSocket-Key` and that agreement.

use std::fmt;

use bytes::Bytes;
use http::header::{CONNECTION, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE};
use http::{HeaderMap, Method, Version};
use tungstenite::handshake::derive_accept_key;

use super::extension::Deflate;

/// Why an upgrade request was refused. The caller answers with [`HandshakeError::status`]
/// and [`HandshakeError::message`] (or sends [`HandshakeError::error_response`] as is) and
/// closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeError {
    /// Not a GET: answer 405 with `Allow: GET`.
    Method,
    /// Not HTTP/1.1 (an HTTP/1.0 client cannot upgrade): answer 400.
    HttpVersion,
    /// No `Upgrade: websocket`: a plain HTTP request on a WebSocket path. Answer 400.
    NotWebSocket,
    /// `Connection` lacks the `upgrade` token: answer 400.
    ConnectionNotUpgrade,
    /// `Sec-WebSocket-Version` missing or not 13: answer 426 with
    /// `Sec-WebSocket-Version: 13` so the client can retry with the version we speak.
    UnsupportedVersion,
    /// No `Sec-WebSocket-Key`: answer 400.
    MissingKey,
    /// `Sec-WebSocket-Key` is not the base64 of 16 bytes: answer 400.
    InvalidKey,
}

impl HandshakeError {
    /// HTTP status of the refusal: 405, 426 or 400.
    pub fn status(&self) -> u16 {
        match self {
            HandshakeError::Method => 405,
            HandshakeError::UnsupportedVersion => 426,
            _ => 400,
        }
    }

    /// One line saying which check failed, for the response body and the log.
    pub fn message(&self) -> &'static str {
        match self {
            HandshakeError::Method => "WebSocket upgrade requires GET",
            HandshakeError::HttpVersion => "WebSocket upgrade requires HTTP/1.1",
            HandshakeError::NotWebSocket => "missing header Upgrade: websocket",
            HandshakeError::ConnectionNotUpgrade => "missing header Connection: Upgrade",
            HandshakeError::UnsupportedVersion => "Sec-WebSocket-Version must be 13",
            HandshakeError::MissingKey => "missing header Sec-WebSocket-Key",
            HandshakeError::InvalidKey => "Sec-WebSocket-Key is not 16 bytes of base64",
        }
    }

    /// Headers the refusal must carry besides the usual ones (`Allow` for 405,
    /// `Sec-WebSocket-Version` for 426), each line ending in CRLF.
    pub fn extra_headers(&self) -> &'static str {
        match self {
            HandshakeError::Method => "Allow: GET\r\n",
            HandshakeError::UnsupportedVersion => "Sec-WebSocket-Version: 13\r\n",
            _ => "",
        }
    }

    /// A complete plain-text HTTP/1.1 error response that closes the connection.
    pub fn error_response(&self) -> Bytes {
        let reason = match self.status() {
            405 => "Method Not Allowed",
            426 => "Upgrade Required",
            _ => "Bad Request",
        };
        let body = self.message();
        let head = format!(
            "HTTP/1.1 {} {reason}\r\n{}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            self.status(),
            self.extra_headers(),
            body.len(),
        );
        Bytes::from(head)
    }
}

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for HandshakeError {}

/// Validates an upgrade request and returns the full `101 Switching Protocols` response,
/// negotiating no extension.
pub fn upgrade_response(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
) -> Result<Bytes, HandshakeError> {
    upgrade_response_with(method, version, headers, None)
}

/// [`upgrade_response`] answering `Sec-WebSocket-Extensions` with `deflate` when given.
pub fn upgrade_response_with(
    method: &Method,
    version: Version,
    headers: &HeaderMap,
    deflate: Option<&Deflate>,
) -> Result<Bytes, HandshakeError> {
    if method != Method::GET {
        return Err(HandshakeError::Method);
    }
    if version != Version::HTTP_11 {
        return Err(HandshakeError::HttpVersion);
    }
    if !has_token(headers, &UPGRADE, "websocket") {
        return Err(HandshakeError::NotWebSocket);
    }
    if !has_token(headers, &CONNECTION, "upgrade") {
        return Err(HandshakeError::ConnectionNotUpgrade);
    }
    let version = headers
        .get(SEC_WEBSOCKET_VERSION)
        .map(|v| v.as_bytes().trim_ascii());
    if version != Some(b"13") {
        return Err(HandshakeError::UnsupportedVersion);
    }
    let key = headers
        .get(SEC_WEBSOCKET_KEY)
        .ok_or(HandshakeError::MissingKey)?;
    let key = key.as_bytes().trim_ascii();
    if !is_base64_of_16_bytes(key) {
        return Err(HandshakeError::InvalidKey);
    }
    let accept = derive_accept_key(key);
    let mut out = Vec::with_capacity(160);
    out.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ",
    );
    out.extend_from_slice(accept.as_bytes());
    if let Some(deflate) = deflate {
        out.extend_from_slice(b"\r\nSec-WebSocket-Extensions: ");
        out.extend_from_slice(deflate.response_value().as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    Ok(Bytes::from(out))
}

/// Whether any value of header `name`, read as a comma-separated token list, holds `token`
/// (ASCII case-insensitive): `Connection: keep-alive, Upgrade` must pass, as Firefox sends it.
fn has_token(headers: &HeaderMap, name: &http::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|item| item.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// Whether `key` is standard padded base64 of exactly 16 bytes: 22 alphabet characters and
/// `==`. Trailing bits of the last character are not checked, as lenient decoders do not.
fn is_base64_of_16_bytes(key: &[u8]) -> bool {
    let is_alphabet = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    match key.split_at_checked(22) {
        Some((data, pad)) => pad == b"==" && data.iter().all(is_alphabet),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RFC_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(UPGRADE, "websocket".parse().expect("static"));
        headers.insert(CONNECTION, "Upgrade".parse().expect("static"));
        headers.insert(SEC_WEBSOCKET_VERSION, "13".parse().expect("static"));
        headers.insert(SEC_WEBSOCKET_KEY, RFC_KEY.parse().expect("static"));
        headers
    }

    fn upgrade(headers: &HeaderMap) -> Result<Bytes, HandshakeError> {
        upgrade_response(&Method::GET, Version::HTTP_11, headers)
    }

    #[test]
    fn rfc_example_key_gives_rfc_accept_key() {
        // RFC 6455 sections 1.3 and 4.2.2: base64(SHA-1(key + GUID)).
        assert_eq!(
            derive_accept_key(RFC_KEY.as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let response = upgrade(&request()).expect("valid request");
        assert_eq!(
            &response[..],
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
               Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"[..]
        );
    }

    #[test]
    fn an_agreed_deflate_is_answered() {
        let mut headers = request();
        headers.insert(
            http::header::SEC_WEBSOCKET_EXTENSIONS,
            "permessage-deflate; client_max_window_bits"
                .parse()
                .expect("static"),
        );
        let plain = upgrade(&headers).expect("valid");
        assert!(
            !std::str::from_utf8(&plain)
                .expect("ascii")
                .contains("Extensions")
        );
        let deflate = crate::ws::negotiate(&headers).expect("offered");
        let response =
            upgrade_response_with(&Method::GET, Version::HTTP_11, &headers, Some(&deflate))
                .expect("valid");
        let text = std::str::from_utf8(&response).expect("ascii");
        assert!(
            text.ends_with(
                "\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; \
                 client_no_context_takeover\r\n\r\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn header_values_are_case_insensitive_and_connection_is_a_token_list() {
        let mut headers = request();
        headers.insert(UPGRADE, "WebSocket".parse().expect("static"));
        headers.insert(CONNECTION, "keep-alive, UPGRADE".parse().expect("static"));
        assert!(upgrade(&headers).is_ok());
        headers.insert(CONNECTION, "keep-alive".parse().expect("static"));
        headers.append(CONNECTION, "upgrade".parse().expect("static"));
        assert!(upgrade(&headers).is_ok());
    }

    #[test]
    fn wrong_method_or_http_version_is_refused() {
        let headers = request();
        let post = upgrade_response(&Method::POST, Version::HTTP_11, &headers);
        assert_eq!(post, Err(HandshakeError::Method));
        assert_eq!(HandshakeError::Method.status(), 405);
        let old = upgrade_response(&Method::GET, Version::HTTP_10, &headers);
        assert_eq!(old, Err(HandshakeError::HttpVersion));
    }

    #[test]
    fn missing_or_wrong_headers_say_which_check_failed() {
        let cases = [
            (UPGRADE, None, HandshakeError::NotWebSocket),
            (UPGRADE, Some("h2c"), HandshakeError::NotWebSocket),
            (CONNECTION, None, HandshakeError::ConnectionNotUpgrade),
            (
                CONNECTION,
                Some("keep-alive, upgraded"),
                HandshakeError::ConnectionNotUpgrade,
            ),
            (
                SEC_WEBSOCKET_VERSION,
                None,
                HandshakeError::UnsupportedVersion,
            ),
            (
                SEC_WEBSOCKET_VERSION,
                Some("8"),
                HandshakeError::UnsupportedVersion,
            ),
            (SEC_WEBSOCKET_KEY, None, HandshakeError::MissingKey),
            (
                SEC_WEBSOCKET_KEY,
                Some("YWJjZGVmZ2hpamtsbW5v"),
                HandshakeError::InvalidKey,
            ),
            (
                SEC_WEBSOCKET_KEY,
                Some("dGhlIHNhbXBsZSBub25jZQ"),
                HandshakeError::InvalidKey,
            ),
            (
                SEC_WEBSOCKET_KEY,
                Some("dGhlIHNhbXBsZSBub25j*Q=="),
                HandshakeError::InvalidKey,
            ),
        ];
        for (name, value, expected) in cases {
            let mut headers = request();
            match value {
                Some(v) => headers.insert(name.clone(), v.parse().expect("static")),
                None => headers.remove(&name),
            };
            assert_eq!(upgrade(&headers), Err(expected), "{name}: {value:?}");
            assert_eq!(
                expected.status(),
                if name == SEC_WEBSOCKET_VERSION {
                    426
                } else {
                    400
                }
            );
        }
    }

    #[test]
    fn wrong_version_answer_names_version_13() {
        let response = HandshakeError::UnsupportedVersion.error_response();
        let text = std::str::from_utf8(&response).expect("ascii");
        assert!(
            text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"), "{text}");
        assert!(
            text.ends_with("\r\n\r\nSec-WebSocket-Version must be 13"),
            "{text}"
        );
    }
}
