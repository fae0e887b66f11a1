//! Signed REST requests, as the Pusher HTTP API documents them and the official server
//! libraries (e.g. `pusher` for node, `createSignedQueryString`) send them.
//!
//! The string to sign is `METHOD\nPATH\nQUERY`, where QUERY is every query parameter except
//! `auth_signature`, keys lowercased, sorted by key, joined as `key=value` with `&`, with the
//! values *not* URL-escaped. The libraries sign the raw values and the server sees them
//! percent-decoded, so checking against decoded values (from [`super::parse_query`]) is what
//! makes GETs with `info=user_count,subscription_count` or `filter_by_prefix=presence-` pass.
//! The signing side, for tests and the load generator, is in `sign.rs`.

use super::{md5_hex, verify_hex};

/// How far `auth_timestamp` may be from the server clock, either way (Pusher's 600 s).
pub const REST_TIMESTAMP_TOLERANCE_SECS: u64 = 600;

/// Why a REST request failed authentication. Every variant is answered with HTTP 401 and the
/// Display text as the `error` message; none of them should be retried unchanged.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestAuthError {
    /// One of `auth_key`, `auth_timestamp`, `auth_version`, `auth_signature` is absent, or
    /// `body_md5` is absent while the request has a body.
    #[error("missing required query parameter {0}")]
    MissingParam(&'static str),
    /// An auth parameter appears twice, so which one was signed is ambiguous.
    #[error("query parameter {0} is repeated")]
    DuplicateParam(&'static str),
    /// `auth_key` is not this app's key (wrong credentials in the client library).
    #[error("auth_key does not match the app key")]
    KeyMismatch,
    /// `auth_version` is not `1.0`, the only version Pusher defines.
    #[error("unsupported auth_version {0:?}, expected \"1.0\"")]
    UnsupportedVersion(String),
    /// `auth_timestamp` is not a whole number of seconds since the epoch.
    #[error("auth_timestamp is not a unix time in seconds")]
    BadTimestamp,
    /// `auth_timestamp` is more than [`REST_TIMESTAMP_TOLERANCE_SECS`] from the server clock:
    /// a replayed request, or a client whose clock is wrong.
    #[error("auth_timestamp is not within 600 s of the server time")]
    StaleTimestamp,
    /// `body_md5` is not the MD5 of the body received (truncated or altered in transit).
    #[error("body_md5 does not match the request body")]
    BodyMd5Mismatch,
    /// `auth_signature` is not the HMAC of the request with the app secret.
    #[error("invalid auth_signature")]
    BadSignature,
}

/// Checks a signed REST request; see the module docs for the string to sign.
///
/// `method` is the HTTP method (uppercased here), `path` the request path exactly as received
/// (with any path prefix, without the query), `query` the decoded query pairs in any order,
/// `body` the raw body bytes. The checks run cheapest first: presence of the auth parameters,
/// key, version, timestamp, body MD5, and last the signature, compared in constant time.
pub fn verify_rest_request(
    app_key: &str,
    app_secret: &str,
    method: &str,
    path: &str,
    query: &[(String, String)],
    body: &[u8],
    now_unix_secs: u64,
) -> Result<(), RestAuthError> {
    let auth_key = required(query, "auth_key")?;
    let timestamp = required(query, "auth_timestamp")?;
    let version = required(query, "auth_version")?;
    let signature = required(query, "auth_signature")?;
    let body_md5 = optional(query, "body_md5")?;

    if auth_key != app_key {
        return Err(RestAuthError::KeyMismatch);
    }
    if version != "1.0" {
        return Err(RestAuthError::UnsupportedVersion(version.to_owned()));
    }
    let timestamp: u64 = timestamp.parse().map_err(|_| RestAuthError::BadTimestamp)?;
    if timestamp.abs_diff(now_unix_secs) > REST_TIMESTAMP_TOLERANCE_SECS {
        return Err(RestAuthError::StaleTimestamp);
    }
    match body_md5 {
        Some(sent) if !sent.eq_ignore_ascii_case(&md5_hex(body)) => {
            return Err(RestAuthError::BodyMd5Mismatch);
        }
        None if !body.is_empty() => return Err(RestAuthError::MissingParam("body_md5")),
        _ => {}
    }

    let to_sign = string_to_sign(
        method,
        path,
        query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    );
    if verify_hex(app_secret, to_sign.as_bytes(), signature) {
        Ok(())
    } else {
        Err(RestAuthError::BadSignature)
    }
}

/// `METHOD\nPATH\nk1=v1&k2=v2...` over every pair but `auth_signature`, keys lowercased and
/// sorted (stable, so repeated non-auth keys keep their order).
pub(super) fn string_to_sign<'a>(
    method: &str,
    path: &str,
    pairs: impl Iterator<Item = (&'a str, &'a str)>,
) -> String {
    let mut pairs: Vec<(String, &str)> = pairs
        .map(|(key, value)| (key.to_ascii_lowercase(), value))
        .filter(|(key, _)| key != "auth_signature")
        .collect();
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let query: Vec<String> = pairs
        .iter()
        .map(|(key, value)| format!("{key}={value}"))
        .collect();
    format!(
        "{}\n{}\n{}",
        method.to_ascii_uppercase(),
        path,
        query.join("&")
    )
}

fn required<'a>(
    query: &'a [(String, String)],
    name: &'static str,
) -> Result<&'a str, RestAuthError> {
    optional(query, name)?.ok_or(RestAuthError::MissingParam(name))
}

fn optional<'a>(
    query: &'a [(String, String)],
    name: &'static str,
) -> Result<Option<&'a str>, RestAuthError> {
    let mut found = query
        .iter()
        .filter(|(key, _)| key.eq_ignore_ascii_case(name));
    let first = found.next().map(|(_, value)| value.as_str());
    if found.next().is_some() {
        return Err(RestAuthError::DuplicateParam(name));
    }
    Ok(first)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::super::parse_query;
    use super::RestAuthError::*;
    use super::*;

    // Pusher's documented worked example (HTTP API reference, "Generating authentication
    // signatures"): app 3, key/secret below, POST /apps/3/events at 1353088179.
    pub(crate) const DOC_KEY: &str = "278d425bdf160c739803";
    pub(crate) const DOC_SECRET: &str = "7ad3773142a6692b25b8";
    pub(crate) const DOC_BODY: &[u8] =
        br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    pub(crate) const DOC_QUERY: &str = "auth_key=278d425bdf160c739803&auth_timestamp=1353088179&auth_version=1.0\
        &body_md5=ec365a775a4cd0599faeb73354201b6f\
        &auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c";
    pub(crate) const DOC_TIME: u64 = 1353088179;

    /// Checks `query` and `body` as a POST to the documented example's app and path.
    fn doc(query: &str, body: &[u8], now: u64) -> Result<(), RestAuthError> {
        let query = parse_query(query);
        verify_rest_request(
            DOC_KEY,
            DOC_SECRET,
            "POST",
            "/apps/3/events",
            &query,
            body,
            now,
        )
    }

    /// Checks a request to app-key / app-secret at 1700000000 (the node-library vectors).
    fn app(method: &str, path: &str, query: &str, body: &[u8]) -> Result<(), RestAuthError> {
        let query = parse_query(query);
        verify_rest_request(
            "app-key",
            "app-secret",
            method,
            path,
            &query,
            body,
            1700000000,
        )
    }

    #[test]
    fn accepts_pusher_documented_post_example() {
        assert_eq!(doc(DOC_QUERY, DOC_BODY, DOC_TIME + 5), Ok(()));
    }

    #[test]
    fn stale_timestamp_is_rejected_past_600_seconds_either_way() {
        assert_eq!(doc(DOC_QUERY, DOC_BODY, DOC_TIME + 600), Ok(()));
        assert_eq!(doc(DOC_QUERY, DOC_BODY, DOC_TIME - 600), Ok(()));
        assert_eq!(
            doc(DOC_QUERY, DOC_BODY, DOC_TIME + 601),
            Err(StaleTimestamp)
        );
        assert_eq!(
            doc(DOC_QUERY, DOC_BODY, DOC_TIME - 601),
            Err(StaleTimestamp)
        );
    }

    #[test]
    fn wrong_key_is_rejected() {
        let query = DOC_QUERY.replace(DOC_KEY, "0000000000000000000a");
        assert_eq!(doc(&query, DOC_BODY, DOC_TIME), Err(KeyMismatch));
    }

    #[test]
    fn altered_body_is_an_md5_mismatch() {
        let body = br#"{"name":"foo","channels":["project-4"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(doc(DOC_QUERY, body, DOC_TIME), Err(BodyMd5Mismatch));
        assert_eq!(doc(DOC_QUERY, b"", DOC_TIME), Err(BodyMd5Mismatch));
    }

    #[test]
    fn body_without_body_md5_is_rejected() {
        let query = DOC_QUERY.replace("&body_md5=ec365a775a4cd0599faeb73354201b6f", "");
        assert_eq!(
            doc(&query, DOC_BODY, DOC_TIME),
            Err(MissingParam("body_md5"))
        );
    }

    #[test]
    fn tampered_or_added_param_breaks_the_signature() {
        let later = DOC_QUERY.replace("1353088179", "1353088180");
        assert_eq!(doc(&later, DOC_BODY, DOC_TIME), Err(BadSignature));
        let added = format!("{DOC_QUERY}&socket_id=1.2");
        assert_eq!(doc(&added, DOC_BODY, DOC_TIME), Err(BadSignature));
        let query = parse_query(DOC_QUERY);
        let other_path = verify_rest_request(
            DOC_KEY,
            DOC_SECRET,
            "POST",
            "/apps/4/events",
            &query,
            DOC_BODY,
            DOC_TIME,
        );
        assert_eq!(other_path, Err(BadSignature));
        let other_method = verify_rest_request(
            DOC_KEY,
            DOC_SECRET,
            "PUT",
            "/apps/3/events",
            &query,
            DOC_BODY,
            DOC_TIME,
        );
        assert_eq!(other_method, Err(BadSignature));
    }

    #[test]
    fn missing_repeated_or_malformed_auth_params_are_named() {
        let no_sig = DOC_QUERY
            .split("&auth_signature")
            .next()
            .unwrap_or_default();
        assert_eq!(
            doc(no_sig, DOC_BODY, DOC_TIME),
            Err(MissingParam("auth_signature"))
        );
        let twice = format!("{DOC_QUERY}&auth_key={DOC_KEY}");
        assert_eq!(
            doc(&twice, DOC_BODY, DOC_TIME),
            Err(DuplicateParam("auth_key"))
        );
        let v2 = DOC_QUERY.replace("auth_version=1.0", "auth_version=2.0");
        assert_eq!(
            doc(&v2, DOC_BODY, DOC_TIME),
            Err(UnsupportedVersion("2.0".to_owned()))
        );
        let bad_ts = DOC_QUERY.replace("1353088179", "soon");
        assert_eq!(doc(&bad_ts, DOC_BODY, DOC_TIME), Err(BadTimestamp));
        assert_eq!(doc("", b"", DOC_TIME), Err(MissingParam("auth_key")));
    }

    // Query strings produced by the official node library (pusher 5.3.4, createSignedQueryString)
    // with key app-key, secret app-secret, Date.now() = 1700000000 s; checked with python's hmac.
    #[test]
    fn accepts_node_library_get_with_info_and_filter_by_prefix() {
        let query = "auth_key=app-key&auth_timestamp=1700000000&auth_version=1.0&filter_by_prefix=presence-\
            &info=user_count&auth_signature=fd5a1b38d92aee2b7913a8cf43136cffab888ee5a097536910d6239f08eb68a2";
        assert_eq!(app("GET", "/apps/app-id/channels", query, b""), Ok(()));
        assert_eq!(
            app(
                "GET",
                "/apps/app-id/channels",
                &query.replace("presence-", "private-"),
                b""
            ),
            Err(BadSignature)
        );
    }

    #[test]
    fn accepts_node_library_get_without_params() {
        let query = "auth_key=app-key&auth_timestamp=1700000000&auth_version=1.0\
            &auth_signature=a7afae233250cdf3d2c9b18ed80afcd11f03f89614c48018dec50a034ca1143a";
        assert_eq!(
            app(
                "GET",
                "/apps/app-id/channels/presence-room/users",
                query,
                b""
            ),
            Ok(())
        );
    }

    #[test]
    fn accepts_node_library_post_with_body_md5() {
        let body = br#"{"name":"greet","channels":["chat","news"],"data":"{\"hi\":1}"}"#;
        let query = "auth_key=app-key&auth_timestamp=1700000000&auth_version=1.0&body_md5=e8df82995c7d5310a9542f56a1c307c0\
            &auth_signature=641591245c72ca3554fa3ef3844e98fea97ff3402894d3d4adca2d945b156d13";
        assert_eq!(app("POST", "/apps/app-id/events", query, body), Ok(()));
    }

    #[test]
    fn percent_encoded_values_are_checked_decoded_in_any_order() {
        // Signed over `info=subscription_count,user_count` (python hmac); the comma arrives as %2C.
        let query = "info=subscription_count%2Cuser_count&filter_by_prefix=presence-&auth_version=1.0\
            &auth_key=app-key&auth_timestamp=1700000000\
            &auth_signature=ecdfdec1ab618d1f23803b90d8d043cf76dfb813beeb6f62ccde18bc4b6f7cfe";
        assert_eq!(app("get", "/apps/app-id/channels", query, b""), Ok(()));
    }
}
