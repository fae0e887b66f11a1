//! What nodes say to each other over Redis pub/sub, as compact binary messages: a
//! published frame (already encoded by the origin node, so every node writes the same
//! bytes), "terminate this user", a node's subscription count of a channel, and a
//! user's cluster-wide online state. Pure: no IO.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::protocol::SocketId;

/// One message on the broadcast channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Deliver `frame` to subscribers of `channel` except `except`.
    Publish {
        node: u32,
        app_id: String,
        channel: String,
        except: Option<SocketId>,
        /// Keep as the cache channel's last event.
        cache: bool,
        frame: Bytes,
    },
    /// Close every socket of `user_id` (4009).
    Terminate {
        node: u32,
        app_id: String,
        user_id: String,
    },
    /// Cluster-wide connection quota: `node` was refused a slot of `app_id`; every node
    /// gives its unused slots back to Redis and answers with `done` set.
    Reclaim {
        node: u32,
        app_id: String,
        done: bool,
    },
    /// The sending node holds `count` subscriptions to `channel` now (subscription
    /// counts, coalesced by its home shard).
    Count {
        node: u32,
        app_id: String,
        channel: String,
        count: u64,
    },
    /// `user_id` came online in the cluster, or went offline (watchlist events).
    Online {
        node: u32,
        app_id: String,
        user_id: String,
        online: bool,
    },
}

/// A message that could not be decoded (another program on the channel, or a newer
/// version): skipped and counted, never a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed cluster message")]
pub struct Malformed;

const PUBLISH: u8 = 1;
const TERMINATE: u8 = 2;
const RECLAIM: u8 = 7;
const COUNT: u8 = 10;
const ONLINE: u8 = 11;
/// First byte of every message, so foreign traffic on the channel is recognised.
const MAGIC: u8 = 0xCC;

impl Message {
    /// The node that sent it.
    #[must_use]
    pub fn node(&self) -> u32 {
        match self {
            Self::Publish { node, .. }
            | Self::Terminate { node, .. }
            | Self::Reclaim { node, .. }
            | Self::Count { node, .. }
            | Self::Online { node, .. } => *node,
        }
    }

    /// Encodes the message.
    #[must_use]
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(64);
        out.put_u8(MAGIC);
        match self {
            Self::Publish {
                node,
                app_id,
                channel,
                except,
                cache,
                frame,
            } => {
                out.reserve(frame.len() + app_id.len() + channel.len() + 32);
                out.put_u8(PUBLISH);
                out.put_u32(*node);
                put_str(&mut out, app_id);
                put_str(&mut out, channel);
                match except {
                    Some(id) => {
                        out.put_u8(1);
                        out.put_u32(id.node);
                        out.put_u64(id.local);
                    }
                    None => out.put_u8(0),
                }
                out.put_u8(u8::from(*cache));
                out.put_slice(frame);
            }
            Self::Terminate {
                node,
                app_id,
                user_id,
            } => {
                out.put_u8(TERMINATE);
                out.put_u32(*node);
                put_str(&mut out, app_id);
                put_str(&mut out, user_id);
            }
            Self::Reclaim { node, app_id, done } => {
                out.put_u8(RECLAIM);
                out.put_u32(*node);
                put_str(&mut out, app_id);
                out.put_u8(u8::from(*done));
            }
            Self::Count {
                node,
                app_id,
                channel,
                count,
            } => {
                out.put_u8(COUNT);
                out.put_u32(*node);
                put_str(&mut out, app_id);
                put_str(&mut out, channel);
                out.put_u64(*count);
            }
            Self::Online {
                node,
                app_id,
                user_id,
                online,
            } => {
                out.put_u8(ONLINE);
                out.put_u32(*node);
                put_str(&mut out, app_id);
                put_str(&mut out, user_id);
                out.put_u8(u8::from(*online));
            }
        }
        out.freeze()
    }

    /// Decodes a message; the frame is copied out so it does not pin the read buffer.
    pub fn decode(mut buf: &[u8]) -> Result<Self, Malformed> {
        if get_u8(&mut buf)? != MAGIC {
            return Err(Malformed);
        }
        let kind = get_u8(&mut buf)?;
        let node = get_u32(&mut buf)?;
        match kind {
            PUBLISH => {
                let app_id = get_str(&mut buf)?;
                let channel = get_str(&mut buf)?;
                let except = match get_u8(&mut buf)? {
                    0 => None,
                    1 => Some(SocketId {
                        node: get_u32(&mut buf)?,
                        local: get_u64(&mut buf)?,
                    }),
                    _ => return Err(Malformed),
                };
                let cache = get_u8(&mut buf)? == 1;
                let frame = Bytes::copy_from_slice(buf);
                Ok(Self::Publish {
                    node,
                    app_id,
                    channel,
                    except,
                    cache,
                    frame,
                })
            }
            TERMINATE => {
                let app_id = get_str(&mut buf)?;
                let user_id = get_str(&mut buf)?;
                Ok(Self::Terminate {
                    node,
                    app_id,
                    user_id,
                })
            }
            RECLAIM => {
                let app_id = get_str(&mut buf)?;
                let done = match get_u8(&mut buf)? {
                    0 => false,
                    1 => true,
                    _ => return Err(Malformed),
                };
                Ok(Self::Reclaim { node, app_id, done })
            }
            COUNT => Ok(Self::Count {
                node,
                app_id: get_str(&mut buf)?,
                channel: get_str(&mut buf)?,
                count: get_u64(&mut buf)?,
            }),
            ONLINE => Ok(Self::Online {
                node,
                app_id: get_str(&mut buf)?,
                user_id: get_str(&mut buf)?,
                online: get_u8(&mut buf)? == 1,
            }),
            _ => Err(Malformed),
        }
    }
}

fn put_str(out: &mut BytesMut, s: &str) {
    out.put_u32(s.len() as u32);
    out.put_slice(s.as_bytes());
}

fn get_u8(buf: &mut &[u8]) -> Result<u8, Malformed> {
    if buf.remaining() < 1 {
        return Err(Malformed);
    }
    Ok(buf.get_u8())
}

fn get_u32(buf: &mut &[u8]) -> Result<u32, Malformed> {
    if buf.remaining() < 4 {
        return Err(Malformed);
    }
    Ok(buf.get_u32())
}

fn get_u64(buf: &mut &[u8]) -> Result<u64, Malformed> {
    if buf.remaining() < 8 {
        return Err(Malformed);
    }
    Ok(buf.get_u64())
}

fn get_str(buf: &mut &[u8]) -> Result<String, Malformed> {
    let len = get_u32(buf)? as usize;
    if buf.remaining() < len {
        return Err(Malformed);
    }
    let s = std::str::from_utf8(&buf[..len])
        .map_err(|_| Malformed)?
        .to_owned();
    buf.advance(len);
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_round_trips_with_and_without_exclusion() {
        for except in [None, Some(SocketId { node: 7, local: 99 })] {
            let m = Message::Publish {
                node: 42,
                app_id: "app-id".into(),
                channel: "private-é".into(),
                except,
                cache: true,
                frame: Bytes::from_static(b"\x81\x05hello"),
            };
            assert_eq!(Message::decode(&m.encode()), Ok(m.clone()));
            assert_eq!(m.node(), 42);
        }
    }

    #[test]
    fn terminate_round_trips() {
        let m = Message::Terminate {
            node: 1,
            app_id: "a".into(),
            user_id: "u1".into(),
        };
        assert_eq!(Message::decode(&m.encode()), Ok(m));
    }

    #[test]
    fn reclaim_round_trips() {
        for done in [false, true] {
            let m = Message::Reclaim {
                node: 3,
                app_id: "a".into(),
                done,
            };
            assert_eq!(Message::decode(&m.encode()), Ok(m));
        }
    }

    #[test]
    fn counts_and_online_status_round_trip() {
        let c = Message::Count {
            node: 3,
            app_id: "a".into(),
            channel: "feed".into(),
            count: 1_000,
        };
        assert_eq!(Message::decode(&c.encode()), Ok(c));
        for online in [true, false] {
            let o = Message::Online {
                node: 4,
                app_id: "a".into(),
                user_id: "u".into(),
                online,
            };
            assert_eq!(Message::decode(&o.encode()), Ok(o.clone()));
            assert_eq!(o.node(), 4);
        }
    }

    #[test]
    fn truncated_or_foreign_messages_are_malformed() {
        let m = Message::Terminate {
            node: 1,
            app_id: "a".into(),
            user_id: "u1".into(),
        }
        .encode();
        for cut in 0..m.len() {
            assert_eq!(Message::decode(&m[..cut]), Err(Malformed), "cut at {cut}");
        }
        assert_eq!(Message::decode(b"{\"json\":true}"), Err(Malformed));
        assert_eq!(Message::decode(&[MAGIC, 9, 0, 0, 0, 1]), Err(Malformed));
    }
}
