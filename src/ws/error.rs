//! Why a client's frames were refused, and the close code that says so.
//!
//! Every variant is fatal to the connection: RFC 6455 gives an endpoint that receives a
//! bad frame no way to resynchronise. The caller sends `close_frame(err.close_code(), "")`,
//! stops reading and closes the socket; there is nothing else to decide per variant, which
//! is why the caller needs only [`WsError::close_code`].

/// Close code 1002: the peer broke the framing rules.
pub const PROTOCOL_ERROR: u16 = 1002;
/// Close code 1007: a text message or close reason is not UTF-8, or compressed data is
/// not deflate.
pub const INVALID_PAYLOAD: u16 = 1007;
/// Close code 1009: a frame or message is larger than this server accepts.
pub const MESSAGE_TOO_BIG: u16 = 1009;

/// A protocol violation in client-to-server frames. On any variant: send
/// `close_frame(err.close_code(), "")`, then close the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WsError {
    /// A client frame without the mask bit (RFC 6455 5.1). Close with 1002.
    #[error("client frame is not masked")]
    Unmasked,
    /// RSV1-3 set although no extension was negotiated, or RSV1 on a control frame or a
    /// continuation. Close with 1002.
    #[error("reserved bits set without a negotiated extension")]
    ReservedBits,
    /// Opcode 3-7 or 11-15. Close with 1002.
    #[error("reserved opcode {0}")]
    ReservedOpcode(u8),
    /// A ping, pong or close with FIN clear: control frames must not be fragmented. Close with 1002.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame payload over 125 bytes. Close with 1002.
    #[error("control frame payload of {0} bytes exceeds 125")]
    ControlTooLong(u64),
    /// A continuation frame with no fragmented message open. Close with 1002.
    #[error("continuation frame without a message to continue")]
    UnexpectedContinuation,
    /// A new text or binary frame while a fragmented message is still open. Close with 1002.
    #[error("new data frame inside a fragmented message")]
    InterleavedMessage,
    /// A 64-bit payload length with its most significant bit set (RFC 6455 5.2). Close with 1002.
    #[error("payload length has its most significant bit set")]
    LengthOverflow,
    /// A close payload of exactly one byte: half a status code. Close with 1002.
    #[error("close payload of one byte")]
    CloseTooShort,
    /// A close status code no endpoint may send (1004-1006, 1015, 0-999, 1012-2999, 5000+). Close with 1002.
    #[error("invalid close code {0}")]
    InvalidCloseCode(u16),
    /// A text message (or close reason) that is not UTF-8. Close with 1007.
    #[error("text payload is not valid UTF-8")]
    InvalidUtf8,
    /// A compressed message (permessage-deflate) whose data is not valid deflate. Close
    /// with 1007.
    #[error("compressed message is not valid deflate data")]
    InvalidDeflate,
    /// A frame or message (sum of its fragments) over `max_message_bytes`, refused before it was
    /// buffered, or a compressed message inflating past it, stopped there. Close with 1009.
    #[error("message of {len} bytes exceeds the {max} byte limit")]
    TooBig {
        /// Bytes the message would have once this frame is added.
        len: u64,
        /// The decoder's `max_message_bytes`.
        max: usize,
    },
}

impl WsError {
    /// The status code for the close frame the caller sends before closing:
    /// 1002 protocol error, 1007 invalid UTF-8 payload, 1009 too big.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::InvalidUtf8 | WsError::InvalidDeflate => INVALID_PAYLOAD,
            WsError::TooBig { .. } => MESSAGE_TOO_BIG,
            _ => PROTOCOL_ERROR,
        }
    }
}

/// Whether a peer may put `code` in a close frame (RFC 6455 7.4): the defined codes
/// 1000-1003 and 1007-1011, and the registered and private ranges 3000-4999. 1004 is
/// reserved, 1005/1006/1015 only exist locally, and the rest below 3000 is unassigned.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_their_close_codes() {
        assert_eq!(WsError::Unmasked.close_code(), 1002);
        assert_eq!(WsError::InvalidCloseCode(1005).close_code(), 1002);
        assert_eq!(WsError::InvalidUtf8.close_code(), 1007);
        assert_eq!(WsError::InvalidDeflate.close_code(), 1007);
        assert_eq!(WsError::TooBig { len: 10, max: 5 }.close_code(), 1009);
    }

    #[test]
    fn close_codes_follow_rfc_6455() {
        for code in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999,
        ] {
            assert!(is_valid_close_code(code), "{code} should be valid");
        }
        for code in [
            0, 999, 1004, 1005, 1006, 1012, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_close_code(code), "{code} should be invalid");
        }
    }
}
