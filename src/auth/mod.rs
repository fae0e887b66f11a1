//! HMAC signing and checking for the three signed things of Pusher protocol 7: channel
//! subscriptions (private, presence, encrypted), user sign-in (`pusher:signin`), and REST
//! requests (`rest.rs` checks them, `sign.rs` signs them like the official libraries).
//!
//! Everything here is pure: no clock (REST checks take `now_unix_secs`), no IO, no runtime.
//! Every signature comparison goes through [`verify_hex`], which decodes the hex and lets
//! `hmac` compare the tags in constant time, so a forged signature learns nothing from how
//! long the comparison took.

mod rest;
mod sign;

pub use rest::{REST_TIMESTAMP_TOLERANCE_SECS, RestAuthError, verify_rest_request};
pub use sign::sign_rest_request;

use hmac::{Hmac, KeyInit, Mac};
use md5::{Digest, Md5};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Lowercase hex of HMAC-SHA256(`secret`, `message`): what every Pusher library puts after
/// the `key:` in an `auth` field and in `auth_signature`.
pub fn sign_hex(secret: &str, message: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(message);
    hex::encode(mac.finalize().into_bytes())
}

/// Whether `signature_hex` is HMAC-SHA256(`secret`, `message`), compared in constant time.
/// Upper- or lowercase hex is accepted; anything that is not 64 hex digits is `false`.
pub fn verify_hex(secret: &str, message: &[u8], signature_hex: &str) -> bool {
    let Ok(tag) = hex::decode(signature_hex) else {
        return false;
    };
    let mut mac = new_mac(secret);
    mac.update(message);
    // `verify_slice` rejects a tag of the wrong length and compares the rest in constant time.
    mac.verify_slice(&tag).is_ok()
}

/// Lowercase hex MD5 of a REST request body, as sent in `body_md5`.
pub fn md5_hex(body: &[u8]) -> String {
    hex::encode(Md5::digest(body))
}

/// Checks the `auth` of a `pusher:subscribe` to a private, presence or encrypted channel:
/// `"key:hex(HMAC(secret, socket_id:channel[:channel_data]))"`.
///
/// Pass `channel_data` exactly as the client sent it for presence channels (Soketi signs
/// `socket_id:channel:channel_data` there, even when it is empty) and `None` for private and
/// encrypted ones, whose string to sign has no third part.
pub fn verify_channel_auth(
    app_key: &str,
    app_secret: &str,
    socket_id: &str,
    channel: &str,
    channel_data: Option<&str>,
    auth: &str,
) -> bool {
    let Some(signature) = signature_for_key(app_key, auth) else {
        return false;
    };
    let mut message = format!("{socket_id}:{channel}");
    if let Some(data) = channel_data {
        message.push(':');
        message.push_str(data);
    }
    verify_hex(app_secret, message.as_bytes(), signature)
}

/// Checks the `auth` of a `pusher:signin`: `"key:hex(HMAC(secret, socket_id::user::user_data))"`,
/// with `user_data` exactly as the client sent it (the JSON text, not re-serialized).
pub fn verify_user_auth(
    app_key: &str,
    app_secret: &str,
    socket_id: &str,
    user_data: &str,
    auth: &str,
) -> bool {
    let Some(signature) = signature_for_key(app_key, auth) else {
        return false;
    };
    let message = format!("{socket_id}::user::{user_data}");
    verify_hex(app_secret, message.as_bytes(), signature)
}

/// Decodes a URL query string (without the `?`) into pairs, in order: percent-decoding,
/// `+` as space, as the `application/x-www-form-urlencoded` rules and Soketi's parser do.
/// Invalid UTF-8 after decoding becomes U+FFFD instead of failing the request.
pub fn parse_query(raw: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.as_bytes())
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect()
}

/// Splits `"key:signature"` and returns the signature when the key is this app's. The key is
/// public, so comparing it in variable time leaks nothing.
fn signature_for_key<'a>(app_key: &str, auth: &'a str) -> Option<&'a str> {
    let (key, signature) = auth.split_once(':')?;
    (key == app_key).then_some(signature)
}

fn new_mac(secret: &str) -> HmacSha256 {
    // HMAC takes keys of any length (long ones are hashed), so this cannot fail.
    HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Pusher's documented example credentials.
    const DOC_KEY: &str = "278d425bdf160c739803";
    const DOC_SECRET: &str = "7ad3773142a6692b25b8";

    #[test]
    fn sign_hex_matches_pusher_documented_private_channel_signature() {
        assert_eq!(
            sign_hex(DOC_SECRET, b"1234.1234:private-foobar"),
            "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
    }

    #[test]
    fn verify_hex_accepts_either_case_and_rejects_wrong_length_or_junk() {
        let sig = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        assert!(verify_hex(DOC_SECRET, b"1234.1234:private-foobar", sig));
        assert!(verify_hex(
            DOC_SECRET,
            b"1234.1234:private-foobar",
            &sig.to_uppercase()
        ));
        assert!(!verify_hex(
            DOC_SECRET,
            b"1234.1234:private-foobar",
            &sig[..62]
        ));
        assert!(!verify_hex(DOC_SECRET, b"1234.1234:private-foobar", "zz"));
        assert!(!verify_hex(DOC_SECRET, b"1234.1234:private-foobaz", sig));
        assert!(!verify_hex(
            "other-secret",
            b"1234.1234:private-foobar",
            sig
        ));
    }

    #[test]
    fn md5_hex_matches_pusher_documented_body_md5() {
        let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
        assert_eq!(md5_hex(body), "ec365a775a4cd0599faeb73354201b6f");
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
    }

    #[test]
    fn private_channel_accepts_documented_auth() {
        let auth =
            format!("{DOC_KEY}:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4");
        assert!(verify_channel_auth(
            DOC_KEY,
            DOC_SECRET,
            "1234.1234",
            "private-foobar",
            None,
            &auth
        ));
    }

    #[test]
    fn private_channel_rejects_bad_auth() {
        let sig = "58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4";
        let good = format!("{DOC_KEY}:{sig}");
        // Another socket, another channel, another app's key, no key at all, extra data.
        assert!(!verify_channel_auth(
            DOC_KEY,
            DOC_SECRET,
            "1234.1235",
            "private-foobar",
            None,
            &good
        ));
        assert!(!verify_channel_auth(
            DOC_KEY,
            DOC_SECRET,
            "1234.1234",
            "private-foobaz",
            None,
            &good
        ));
        assert!(!verify_channel_auth(
            DOC_KEY,
            DOC_SECRET,
            "1234.1234",
            "private-foobar",
            None,
            &format!("other:{sig}")
        ));
        assert!(!verify_channel_auth(
            DOC_KEY,
            DOC_SECRET,
            "1234.1234",
            "private-foobar",
            None,
            sig
        ));
        assert!(!verify_channel_auth(
            DOC_KEY,
            DOC_SECRET,
            "1234.1234",
            "private-foobar",
            Some(""),
            &good
        ));
    }

    // Vectors from the official `pusher` node library 5.3.4 (`getSocketSignature`,
    // `getSocketSignatureForUser`) with key app-key / secret app-secret, checked with python's hmac.
    #[test]
    fn presence_channel_accepts_node_library_auth_and_binds_channel_data() {
        let data = r#"{"user_id":"42","user_info":{"name":"Ada"}}"#;
        let auth = "app-key:fed5b1847c9e0cdaf7d3c9f70cb5cc51d4a02401d99dfbfe0b7d4427ce564440";
        assert!(verify_channel_auth(
            "app-key",
            "app-secret",
            "123.456",
            "presence-room",
            Some(data),
            auth
        ));
        let forged = r#"{"user_id":"1","user_info":{"name":"Ada"}}"#;
        assert!(!verify_channel_auth(
            "app-key",
            "app-secret",
            "123.456",
            "presence-room",
            Some(forged),
            auth
        ));
        assert!(!verify_channel_auth(
            "app-key",
            "app-secret",
            "123.456",
            "presence-room",
            None,
            auth
        ));
    }

    #[test]
    fn encrypted_channel_signs_like_private() {
        let auth = "app-key:25f93c7ef55bbb8f8f2d33f7f1848f0f3b31d99d77f4363acf12914e5451f553";
        assert!(verify_channel_auth(
            "app-key",
            "app-secret",
            "123.456",
            "private-encrypted-room",
            None,
            auth
        ));
    }

    #[test]
    fn user_signin_accepts_node_library_auth_and_rejects_tampering() {
        let user_data = r#"{"id":"42","user_info":{"name":"Ada"}}"#;
        let auth = "app-key:8aaff40b229b452125be7a504df78934e0859eba96b11d7b14485bfcbf785a5a";
        assert!(verify_user_auth(
            "app-key",
            "app-secret",
            "123.456",
            user_data,
            auth
        ));
        assert!(!verify_user_auth(
            "app-key",
            "app-secret",
            "123.457",
            user_data,
            auth
        ));
        assert!(!verify_user_auth(
            "app-key",
            "app-secret",
            "123.456",
            r#"{"id":"43"}"#,
            auth
        ));
        assert!(!verify_user_auth(
            "other-key",
            "app-secret",
            "123.456",
            user_data,
            auth
        ));
    }

    #[test]
    fn parse_query_percent_decodes_and_treats_plus_as_space() {
        assert_eq!(
            parse_query(
                "info=user_count%2Csubscription_count&filter_by_prefix=presence-&q=a+b%20c&flag"
            ),
            vec![
                (
                    "info".to_owned(),
                    "user_count,subscription_count".to_owned()
                ),
                ("filter_by_prefix".to_owned(), "presence-".to_owned()),
                ("q".to_owned(), "a b c".to_owned()),
                ("flag".to_owned(), String::new()),
            ]
        );
        assert!(parse_query("").is_empty());
        assert_eq!(
            parse_query("x=%FF"),
            vec![("x".to_owned(), "\u{FFFD}".to_owned())]
        );
    }
}
