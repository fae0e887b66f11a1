//! Socket ids: `\d+\.\d+`, unique in a cluster.

use std::fmt;

/// A connection's Pusher socket id, `node.local`: `node` is chosen at start-up for the
/// process, `local` is a shard-local counter interleaved with the shard number so two
/// shards never hand out the same id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    /// Random per process, so restarts and other nodes do not reuse ids.
    pub node: u32,
    /// `counter * shards + shard`.
    pub local: u64,
}

/// A socket id that is not two decimal numbers joined by a dot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid socket id: expected digits.digits")]
pub struct SocketIdError;

impl SocketId {
    /// Parses `123.456`.
    pub fn parse(text: &str) -> Result<Self, SocketIdError> {
        let (node, local) = text.split_once('.').ok_or(SocketIdError)?;
        let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !digits(node) || !digits(local) {
            return Err(SocketIdError);
        }
        Ok(Self {
            node: node.parse().map_err(|_| SocketIdError)?,
            local: local.parse().map_err(|_| SocketIdError)?,
        })
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.node, self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_id_round_trips_through_text() {
        let id = SocketId {
            node: 12,
            local: 345,
        };
        assert_eq!(id.to_string(), "12.345");
        assert_eq!(SocketId::parse("12.345"), Ok(id));
    }

    #[test]
    fn malformed_socket_ids_are_rejected() {
        for bad in ["", "1", "1.", ".1", "a.1", "1.2.3", "1.-2", "99999999999.1"] {
            assert_eq!(SocketId::parse(bad), Err(SocketIdError), "{bad}");
        }
    }
}
