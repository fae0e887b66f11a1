//! permessage-deflate negotiation (RFC 7692 section 7): reads the client's
//! `Sec-WebSocket-Extensions` offers and picks the first valid permessage-deflate one.
//!
//! The server always answers `server_no_context_takeover; client_no_context_takeover`
//! (section 7.1.1 lets it add both even when not offered, and the client must then
//! comply): every message is compressed and inflated with a fresh context, so a
//! connection keeps no zlib state of its own and compressors and inflaters are shared by
//! a shard. `client_max_window_bits` is accepted and not answered (an inflater with a
//! 32 KiB window reads any smaller window); `server_max_window_bits=N` is answered as
//! asked and the server compresses within it.

use http::HeaderMap;

/// The extension's name in offers and answers.
pub const PERMESSAGE_DEFLATE: &str = "permessage-deflate";

/// What was agreed with a client that negotiated permessage-deflate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deflate {
    /// The server's LZ77 window, 8 to 15 (`server_max_window_bits`; 15 when not asked).
    pub window_bits: u8,
    /// Whether the client asked for `server_max_window_bits`, so the answer names it.
    asked_window: bool,
}

impl Deflate {
    /// The largest window: what a client that does not limit it gets.
    pub const DEFAULT_WINDOW_BITS: u8 = 15;

    /// The `Sec-WebSocket-Extensions` value of the answer.
    #[must_use]
    pub fn response_value(&self) -> String {
        let mut value =
            format!("{PERMESSAGE_DEFLATE}; server_no_context_takeover; client_no_context_takeover");
        if self.asked_window {
            value.push_str(&format!("; server_max_window_bits={}", self.window_bits));
        }
        value
    }
}

/// The first acceptable permessage-deflate offer in the request's
/// `Sec-WebSocket-Extensions` headers, if any. Invalid offers (unknown or repeated
/// parameters, bad window sizes) are skipped, never fatal: the handshake goes on without
/// compression when none is acceptable.
#[must_use]
pub fn negotiate(headers: &HeaderMap) -> Option<Deflate> {
    for value in headers.get_all(http::header::SEC_WEBSOCKET_EXTENSIONS) {
        let Ok(text) = std::str::from_utf8(value.as_bytes()) else {
            continue;
        };
        if let Some(agreed) = negotiate_value(text) {
            return Some(agreed);
        }
    }
    None
}

/// [`negotiate`] over one header value.
#[must_use]
pub fn negotiate_value(value: &str) -> Option<Deflate> {
    parse_offers(value)
        .into_iter()
        .filter(|offer| offer.name.eq_ignore_ascii_case(PERMESSAGE_DEFLATE))
        .find_map(|offer| accept(&offer.params))
}

/// One offered extension: its name and parameters (values unquoted).
#[derive(Debug, PartialEq, Eq)]
struct Offer {
    name: String,
    params: Vec<(String, Option<String>)>,
}

/// Accepts a permessage-deflate offer's parameters, or `None` when the offer is invalid.
fn accept(params: &[(String, Option<String>)]) -> Option<Deflate> {
    let mut seen = [false; 4];
    let mut server_window = None;
    for (name, value) in params {
        let index = match name.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => 0,
            "client_no_context_takeover" if value.is_none() => 1,
            "server_max_window_bits" => {
                server_window = Some(window_bits(value.as_deref()?)?);
                2
            }
            "client_max_window_bits" => {
                if let Some(v) = value {
                    window_bits(v)?;
                }
                3
            }
            _ => return None,
        };
        if std::mem::replace(&mut seen[index], true) {
            return None;
        }
    }
    Some(Deflate {
        window_bits: server_window.unwrap_or(Deflate::DEFAULT_WINDOW_BITS),
        asked_window: server_window.is_some(),
    })
}

/// A window size parameter: 8 to 15 in decimal without leading zeros (RFC 7692 7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    if value.starts_with('0') || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|bits| (8..=15).contains(bits))
}

/// Splits a `Sec-WebSocket-Extensions` value into offers (RFC 6455 9.1): comma-separated
/// extensions, each a token followed by `; param[=value]`, values tokens or quoted
/// strings. A malformed offer is dropped; the rest are still read.
fn parse_offers(value: &str) -> Vec<Offer> {
    let mut offers = Vec::new();
    let mut lexer = Lexer {
        rest: value.as_bytes(),
    };
    loop {
        match lexer.offer() {
            Ok(Some(offer)) => offers.push(offer),
            Ok(None) => {}
            Err(()) => lexer.skip_offer(),
        }
        lexer.space();
        match lexer.rest.first() {
            Some(b',') => lexer.rest = &lexer.rest[1..],
            _ => return offers,
        }
    }
}

struct Lexer<'a> {
    rest: &'a [u8],
}

impl Lexer<'_> {
    /// One offer up to (not including) the next top-level comma; `None` for an empty one.
    fn offer(&mut self) -> Result<Option<Offer>, ()> {
        self.space();
        if matches!(self.rest.first(), None | Some(b',')) {
            return Ok(None);
        }
        let name = self.token()?;
        let mut params = Vec::new();
        loop {
            self.space();
            match self.rest.first() {
                None | Some(b',') => return Ok(Some(Offer { name, params })),
                Some(b';') => self.rest = &self.rest[1..],
                Some(_) => return Err(()),
            }
            self.space();
            let param = self.token()?;
            self.space();
            let value = if self.rest.first() == Some(&b'=') {
                self.rest = &self.rest[1..];
                self.space();
                Some(if self.rest.first() == Some(&b'"') {
                    self.quoted()?
                } else {
                    self.token()?
                })
            } else {
                None
            };
            params.push((param, value));
        }
    }

    /// Skips to the next comma outside a quoted string.
    fn skip_offer(&mut self) {
        let mut quoted = false;
        let mut escaped = false;
        while let Some(&b) = self.rest.first() {
            if !quoted && b == b',' {
                return;
            }
            if escaped {
                escaped = false;
            } else if quoted && b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                quoted = !quoted;
            }
            self.rest = &self.rest[1..];
        }
    }

    fn space(&mut self) {
        while let Some(b' ' | b'\t') = self.rest.first() {
            self.rest = &self.rest[1..];
        }
    }

    /// An RFC 7230 token: one or more tchar.
    fn token(&mut self) -> Result<String, ()> {
        let n = self.rest.iter().take_while(|&&b| is_tchar(b)).count();
        if n == 0 {
            return Err(());
        }
        let token = String::from_utf8_lossy(&self.rest[..n]).into_owned();
        self.rest = &self.rest[n..];
        Ok(token)
    }

    /// A quoted string, unescaped; RFC 7692 wants the result to be a token too.
    fn quoted(&mut self) -> Result<String, ()> {
        self.rest = &self.rest[1..];
        let mut out = Vec::new();
        loop {
            let (&b, tail) = self.rest.split_first().ok_or(())?;
            self.rest = tail;
            match b {
                b'"' => break,
                b'\\' => {
                    let (&c, tail) = self.rest.split_first().ok_or(())?;
                    self.rest = tail;
                    out.push(c);
                }
                _ => out.push(b),
            }
        }
        if out.is_empty() || !out.iter().all(|&b| is_tchar(b)) {
            return Err(());
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(value: &str) -> Option<u8> {
        negotiate_value(value).map(|d| d.window_bits)
    }

    #[test]
    fn browser_and_node_offers_are_accepted() {
        let agreed = negotiate_value("permessage-deflate; client_max_window_bits").expect("ok");
        assert_eq!(agreed.window_bits, 15);
        assert_eq!(
            agreed.response_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        );
        assert!(negotiate_value("permessage-deflate").is_some());
        assert!(negotiate_value("PerMessage-Deflate ; Client_Max_Window_Bits").is_some());
    }

    #[test]
    fn server_window_is_answered_as_asked() {
        let agreed = negotiate_value("permessage-deflate; server_max_window_bits=10").expect("ok");
        assert_eq!(agreed.window_bits, 10);
        assert_eq!(
            agreed.response_value(),
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10"
        );
        assert_eq!(
            window("permessage-deflate; server_max_window_bits=\"8\""),
            Some(8)
        );
        assert_eq!(
            window(
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 client_max_window_bits=9; server_max_window_bits=15"
            ),
            Some(15)
        );
    }

    #[test]
    fn invalid_offers_are_skipped_for_the_next_one() {
        for bad in [
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=ten",
            "permessage-deflate; client_max_window_bits=20",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=10",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; mystery",
            "permessage-deflate; server_max_window_bits=\"1 0\"",
            "permessage-deflate server_no_context_takeover",
        ] {
            assert_eq!(negotiate_value(bad), None, "{bad}");
            let two = format!("{bad}, permessage-deflate; server_max_window_bits=12");
            assert_eq!(window(&two), Some(12), "{two}");
        }
        // An unterminated quote runs to the end of the value.
        assert_eq!(
            negotiate_value("permessage-deflate; server_max_window_bits=\"10, permessage-deflate"),
            None
        );
    }

    #[test]
    fn several_offers_and_other_extensions() {
        assert_eq!(
            window(
                "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=9; \
                 client_max_window_bits, permessage-deflate"
            ),
            Some(9)
        );
        assert_eq!(negotiate_value("x-webkit-deflate-frame"), None);
        assert_eq!(negotiate_value(""), None);
        assert_eq!(negotiate_value(" , ,"), None);
        // A quoted comma does not end the offer it is in.
        assert_eq!(
            window("foo; bar=\"a,b\", permessage-deflate; server_max_window_bits=11"),
            Some(11)
        );
    }

    #[test]
    fn header_lines_are_read_in_turn() {
        let mut headers = HeaderMap::new();
        assert_eq!(negotiate(&headers), None);
        let name = http::header::SEC_WEBSOCKET_EXTENSIONS;
        headers.append(&name, "permessage-deflate; bogus".parse().expect("static"));
        assert_eq!(negotiate(&headers), None);
        headers.append(
            &name,
            "permessage-deflate; server_max_window_bits=13"
                .parse()
                .expect("static"),
        );
        assert_eq!(negotiate(&headers).map(|d| d.window_bits), Some(13));
    }
}
