//! RESP2, sans-IO: commands in, replies and pub/sub pushes out.
//!
//! Commands are encoded by hand (an array of bulk strings, no allocation per argument);
//! replies are decoded with `redis-protocol`, which splits complete frames off the read
//! buffer so bulk payloads stay zero-copy views into it. Nothing here touches a socket.

use std::fmt::Write as _;

use bytes::{Bytes, BytesMut};
use redis_protocol::resp2::decode::decode_bytes_mut;
use redis_protocol::resp2::types::BytesFrame;

/// One reply from the server.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// A null bulk string (`$-1`) or null array (`*-1`): e.g. `GET` of a missing key.
    Nil,
    /// The simple string `+OK`.
    Ok,
    /// Any other simple string, e.g. `+PONG` or `+QUEUED`.
    Status(String),
    /// An integer reply, e.g. the receiver count of `PUBLISH`.
    Int(i64),
    /// A bulk string: binary-safe, a view into the read buffer (no copy).
    Bulk(Bytes),
    /// An array of replies (nested arrays allowed).
    Array(Vec<Reply>),
    /// An error reply (`-ERR ...`, `-WRONGTYPE ...`), without the leading `-`.
    Error(String),
}

/// The server sent bytes that are not RESP2. The stream cannot be resynchronised:
/// drop the connection and reconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("RESP protocol error: {0}")]
pub struct ProtocolError(pub String);

/// What a connection in pub/sub mode can receive.
#[derive(Debug, Clone, PartialEq)]
pub enum PushEvent {
    /// A message published to a channel this connection subscribed to.
    Message { channel: Bytes, payload: Bytes },
    /// Confirmation of `SUBSCRIBE` / `PSUBSCRIBE` for one channel; `count` is the number
    /// of channels this connection is now subscribed to.
    Subscribed { channel: Bytes, count: i64 },
    /// Confirmation of `UNSUBSCRIBE` / `PUNSUBSCRIBE` for one channel.
    Unsubscribed { channel: Bytes, count: i64 },
    /// The answer to `PING` in pub/sub mode.
    Pong,
    /// Anything else (e.g. `pmessage`), passed on for the caller to ignore or inspect.
    Other(Reply),
}

/// Appends `args` as one command (a RESP array of bulk strings) to `buf`.
///
/// Arguments are binary-safe; nothing is escaped.
pub fn encode_command<A: AsRef<[u8]>>(buf: &mut BytesMut, args: &[A]) {
    let payload: usize = args.iter().map(|a| a.as_ref().len() + 16).sum();
    buf.reserve(16 + payload);
    // Writing into a BytesMut never fails: it grows as needed.
    let _ = write!(buf, "*{}\r\n", args.len());
    for arg in args {
        let arg = arg.as_ref();
        let _ = write!(buf, "${}\r\n", arg.len());
        buf.extend_from_slice(arg);
        buf.extend_from_slice(b"\r\n");
    }
}

/// Splits one complete reply off the front of `buf`.
///
/// Returns `Ok(None)` when `buf` does not yet hold a whole reply (read more and call
/// again); `buf` is left untouched then.
pub fn decode_reply(buf: &mut BytesMut) -> Result<Option<Reply>, ProtocolError> {
    match decode_bytes_mut(buf) {
        Ok(Some((frame, _len, _raw))) => Ok(Some(frame_to_reply(frame))),
        Ok(None) => Ok(None),
        Err(err) => Err(ProtocolError(err.to_string())),
    }
}

/// Interprets a reply received in pub/sub mode.
///
/// An error reply or a non-array reply is not a push and is returned as `Err(reply)`:
/// the caller decides whether it is a server error or a protocol violation.
pub fn push_event(reply: Reply) -> Result<PushEvent, Reply> {
    let Reply::Array(items) = reply else {
        return Err(reply);
    };
    let kind = match items.first() {
        Some(Reply::Bulk(kind)) => kind.clone(),
        _ => return Err(Reply::Array(items)),
    };
    let event = match (&kind[..], &items[..]) {
        // `smessage`, `ssubscribe`, `sunsubscribe`: the same for sharded pub/sub.
        (b"message" | b"smessage", [_, Reply::Bulk(channel), Reply::Bulk(payload)]) => {
            PushEvent::Message {
                channel: channel.clone(),
                payload: payload.clone(),
            }
        }
        (
            b"subscribe" | b"psubscribe" | b"ssubscribe",
            [_, Reply::Bulk(channel), Reply::Int(count)],
        ) => PushEvent::Subscribed {
            channel: channel.clone(),
            count: *count,
        },
        (b"unsubscribe" | b"punsubscribe" | b"sunsubscribe", [_, channel, Reply::Int(count)]) => {
            // Unsubscribing from nothing confirms with a nil channel.
            let channel = match channel {
                Reply::Bulk(c) => c.clone(),
                _ => Bytes::new(),
            };
            PushEvent::Unsubscribed {
                channel,
                count: *count,
            }
        }
        (b"pong", _) => PushEvent::Pong,
        _ => PushEvent::Other(Reply::Array(items)),
    };
    Ok(event)
}

fn frame_to_reply(frame: BytesFrame) -> Reply {
    match frame {
        BytesFrame::Null => Reply::Nil,
        BytesFrame::SimpleString(s) if &s[..] == b"OK" => Reply::Ok,
        BytesFrame::SimpleString(s) => Reply::Status(String::from_utf8_lossy(&s).into_owned()),
        BytesFrame::Error(e) => Reply::Error(e.to_string()),
        BytesFrame::Integer(i) => Reply::Int(i),
        BytesFrame::BulkString(b) => Reply::Bulk(b),
        BytesFrame::Array(items) => Reply::Array(items.into_iter().map(frame_to_reply).collect()),
    }
}

#[cfg(test)]
mod tests {
    use redis_protocol::resp2::encode::extend_encode;

    use super::*;

    fn bulk(s: &[u8]) -> Reply {
        Reply::Bulk(Bytes::copy_from_slice(s))
    }

    fn decode_all(input: &[u8]) -> Vec<Reply> {
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(reply) = decode_reply(&mut buf).expect("valid RESP") {
            out.push(reply);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        out
    }

    #[test]
    fn command_encoding_matches_redis_protocol_encoder() {
        let args: [&[u8]; 3] = [b"PUBLISH", b"chan", b"bin\r\n\0\xff"];
        let mut ours = BytesMut::new();
        encode_command(&mut ours, &args);

        let frame = BytesFrame::Array(
            args.iter()
                .map(|a| BytesFrame::BulkString(Bytes::copy_from_slice(a)))
                .collect(),
        );
        let mut theirs = BytesMut::new();
        extend_encode(&mut theirs, &frame, false).expect("encode");
        assert_eq!(ours, theirs);
        assert_eq!(
            &ours[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$4\r\nchan\r\n$7\r\nbin\r\n\0\xff\r\n"
        );
    }

    #[test]
    fn commands_append_to_the_buffer_for_pipelining() {
        let mut buf = BytesMut::new();
        encode_command(&mut buf, &["PING"]);
        encode_command(&mut buf, &[b"GET".as_slice(), b""]);
        assert_eq!(
            &buf[..],
            b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$0\r\n\r\n"
        );
    }

    #[test]
    fn decodes_every_reply_kind() {
        let replies = decode_all(
            b"+OK\r\n+PONG\r\n-ERR bad thing\r\n:-42\r\n$3\r\na\r\n\r\n$-1\r\n*-1\r\n*2\r\n:1\r\n*1\r\n$0\r\n\r\n",
        );
        assert_eq!(
            replies,
            vec![
                Reply::Ok,
                Reply::Status("PONG".into()),
                Reply::Error("ERR bad thing".into()),
                Reply::Int(-42),
                bulk(b"a\r\n"),
                Reply::Nil,
                Reply::Nil,
                Reply::Array(vec![Reply::Int(1), Reply::Array(vec![bulk(b"")])]),
            ]
        );
    }

    #[test]
    fn partial_reply_needs_more_bytes_at_every_split_point() {
        let wire: &[u8] = b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhe\r\nx\r\n";
        for cut in 0..wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            assert_eq!(decode_reply(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "buffer untouched at cut {cut}");
            buf.extend_from_slice(&wire[cut..]);
            let reply = decode_reply(&mut buf).expect("valid").expect("complete");
            assert_eq!(
                reply,
                Reply::Array(vec![bulk(b"message"), bulk(b"ch"), bulk(b"he\r\nx")])
            );
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn garbage_is_a_protocol_error_not_a_panic() {
        for input in [&b"?what\r\n"[..], b"$abc\r\n", b":12x\r\n", b"*-5\r\n"] {
            let mut buf = BytesMut::from(input);
            assert!(decode_reply(&mut buf).is_err(), "{input:?}");
        }
    }

    #[test]
    fn message_push_yields_channel_and_payload() {
        let reply = Reply::Array(vec![bulk(b"message"), bulk(b"ch"), bulk(b"\0\x01")]);
        assert_eq!(
            push_event(reply),
            Ok(PushEvent::Message {
                channel: Bytes::from_static(b"ch"),
                payload: Bytes::from_static(b"\0\x01"),
            })
        );
    }

    #[test]
    fn subscription_confirmations_and_pong_are_recognised() {
        let sub = Reply::Array(vec![bulk(b"subscribe"), bulk(b"a"), Reply::Int(2)]);
        assert_eq!(
            push_event(sub),
            Ok(PushEvent::Subscribed {
                channel: Bytes::from_static(b"a"),
                count: 2
            })
        );
        let unsub = Reply::Array(vec![bulk(b"unsubscribe"), Reply::Nil, Reply::Int(0)]);
        assert_eq!(
            push_event(unsub),
            Ok(PushEvent::Unsubscribed {
                channel: Bytes::new(),
                count: 0
            })
        );
        let pong = Reply::Array(vec![bulk(b"pong"), bulk(b"")]);
        assert_eq!(push_event(pong), Ok(PushEvent::Pong));
    }

    #[test]
    fn sharded_pushes_read_like_classic_ones() {
        let msg = Reply::Array(vec![bulk(b"smessage"), bulk(b"ch"), bulk(b"x")]);
        assert_eq!(
            push_event(msg),
            Ok(PushEvent::Message {
                channel: Bytes::from_static(b"ch"),
                payload: Bytes::from_static(b"x"),
            })
        );
        let sub = Reply::Array(vec![bulk(b"ssubscribe"), bulk(b"a"), Reply::Int(1)]);
        assert!(matches!(push_event(sub), Ok(PushEvent::Subscribed { .. })));
        let unsub = Reply::Array(vec![bulk(b"sunsubscribe"), bulk(b"a"), Reply::Int(0)]);
        assert!(matches!(
            push_event(unsub),
            Ok(PushEvent::Unsubscribed { .. })
        ));
    }

    #[test]
    fn errors_and_non_arrays_are_not_pushes() {
        let err = Reply::Error("ERR only (P)SUBSCRIBE allowed".into());
        assert_eq!(push_event(err.clone()), Err(err));
        assert_eq!(push_event(Reply::Int(1)), Err(Reply::Int(1)));
        let odd = Reply::Array(vec![Reply::Int(1)]);
        assert_eq!(push_event(odd.clone()), Err(odd));
    }

    #[test]
    fn unknown_push_kinds_are_passed_on() {
        let pm = Reply::Array(vec![
            bulk(b"pmessage"),
            bulk(b"p*"),
            bulk(b"pa"),
            bulk(b"x"),
        ]);
        assert_eq!(push_event(pm.clone()), Ok(PushEvent::Other(pm)));
    }
}
