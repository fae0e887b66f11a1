//! Frame header parsing: tungstenite's pure `FrameHeader::parse` plus the RFC 6455 rules
//! that need no connection state (mask, RSV bits, opcodes, control frame shape).
//!
//! Rules that depend on what came before (continuations, the size limit) live in the
//! decoder; keeping these stateless makes them testable one header at a time.

use std::io::Cursor;

use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode as WireOpCode};

use super::error::WsError;

/// The longest header: 2 bytes, 8 bytes of extended length, 4 bytes of mask.
pub const MAX_HEADER_BYTES: usize = 14;
/// RFC 6455 5.5: control frame payloads are at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// The frame types a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl FrameKind {
    /// Close, ping and pong: never fragmented, may interleave with a fragmented message.
    pub fn is_control(self) -> bool {
        matches!(self, FrameKind::Close | FrameKind::Ping | FrameKind::Pong)
    }
}

/// A client frame header that passed the stateless checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: FrameKind,
    /// FIN: this frame ends its message.
    pub fin: bool,
    /// RSV1: with permessage-deflate, the first frame of a compressed message.
    pub rsv1: bool,
    /// The client's masking key (always present: unmasked frames are refused).
    pub mask: [u8; 4],
    /// Payload length as announced; below 2^63, and at most 125 for control frames.
    pub len: u64,
}

/// Parses the header at the start of `bytes`. `Ok(None)`: the header is not complete yet.
/// `Ok(Some((header, size)))`: `size` header bytes were read; the payload follows.
pub fn parse_header(bytes: &[u8]) -> Result<Option<(Header, usize)>, WsError> {
    let mut cursor = Cursor::new(bytes);
    let (raw, len) = match FrameHeader::parse(&mut cursor) {
        Ok(Some(parsed)) => parsed,
        Ok(None) => return Ok(None),
        // Reading from a slice cannot fail, so the only error left is a reserved opcode.
        Err(_) => {
            return Err(WsError::ReservedOpcode(
                bytes.first().map_or(0, |b| b & 0x0f),
            ));
        }
    };
    // The cursor stopped inside `bytes`, so its position fits in usize.
    let size = usize::try_from(cursor.position()).unwrap_or(bytes.len());
    // RSV1 is permessage-deflate's "compressed" bit: whether it is allowed depends on the
    // negotiation and on the message state, which the decoder knows.
    if raw.rsv2 || raw.rsv3 {
        return Err(WsError::ReservedBits);
    }
    let kind = match raw.opcode {
        WireOpCode::Data(Data::Continue) => FrameKind::Continuation,
        WireOpCode::Data(Data::Text) => FrameKind::Text,
        WireOpCode::Data(Data::Binary) => FrameKind::Binary,
        WireOpCode::Control(Control::Close) => FrameKind::Close,
        WireOpCode::Control(Control::Ping) => FrameKind::Ping,
        WireOpCode::Control(Control::Pong) => FrameKind::Pong,
        WireOpCode::Data(Data::Reserved(op)) | WireOpCode::Control(Control::Reserved(op)) => {
            return Err(WsError::ReservedOpcode(op));
        }
    };
    let Some(mask) = raw.mask else {
        return Err(WsError::Unmasked);
    };
    if len >> 63 != 0 {
        return Err(WsError::LengthOverflow);
    }
    if kind.is_control() {
        if raw.rsv1 {
            return Err(WsError::ReservedBits);
        }
        if !raw.is_final {
            return Err(WsError::FragmentedControl);
        }
        if len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(WsError::ControlTooLong(len));
        }
    }
    let header = Header {
        kind,
        fin: raw.is_final,
        rsv1: raw.rsv1,
        mask,
        len,
    };
    Ok(Some((header, size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn header_bytes(first: u8, len: u64, masked: bool) -> Vec<u8> {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut out = vec![first];
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if masked {
            out.extend_from_slice(&MASK);
        }
        out
    }

    #[test]
    fn lengths_use_7_16_and_64_bit_forms() {
        for (len, size) in [
            (0, 6),
            (125, 6),
            (126, 8),
            (65535, 8),
            (65536, 14),
            (1 << 40, 14),
        ] {
            let bytes = header_bytes(0x82, len, true);
            let (header, got) = parse_header(&bytes).expect("valid").expect("complete");
            assert_eq!((header.len, got), (len, size));
            assert_eq!(header.kind, FrameKind::Binary);
            assert_eq!(header.mask, MASK);
        }
    }

    #[test]
    fn incomplete_header_needs_more_bytes() {
        let bytes = header_bytes(0x81, 70000, true);
        for cut in 0..bytes.len() {
            assert_eq!(parse_header(&bytes[..cut]), Ok(None), "cut {cut}");
        }
    }

    #[test]
    fn unmasked_client_frame_is_protocol_error() {
        assert_eq!(
            parse_header(&header_bytes(0x81, 3, false)),
            Err(WsError::Unmasked)
        );
    }

    #[test]
    fn reserved_bits_are_protocol_error() {
        for rsv in [0x20, 0x10] {
            assert_eq!(
                parse_header(&header_bytes(0x81 | rsv, 3, true)),
                Err(WsError::ReservedBits)
            );
        }
        // RSV1 is left to the decoder on data frames, refused on control frames.
        let (header, _) = parse_header(&header_bytes(0xc1, 3, true))
            .expect("ok")
            .expect("complete");
        assert!(header.rsv1);
        assert_eq!(
            parse_header(&header_bytes(0xc9, 0, true)),
            Err(WsError::ReservedBits)
        );
    }

    #[test]
    fn reserved_opcodes_are_protocol_error() {
        for op in (3..=7).chain(11..=15) {
            let got = parse_header(&header_bytes(0x80 | op, 0, true));
            assert_eq!(got, Err(WsError::ReservedOpcode(op)));
            assert_eq!(got.map_err(|e| e.close_code()), Err(1002));
        }
    }

    #[test]
    fn length_with_top_bit_set_is_protocol_error() {
        let bytes = header_bytes(0x82, 1 << 63, true);
        assert_eq!(parse_header(&bytes), Err(WsError::LengthOverflow));
    }

    #[test]
    fn control_frames_must_be_final_and_short() {
        assert_eq!(
            parse_header(&header_bytes(0x09, 1, true)),
            Err(WsError::FragmentedControl)
        );
        assert_eq!(
            parse_header(&header_bytes(0x89, 126, true)),
            Err(WsError::ControlTooLong(126))
        );
        let (header, _) = parse_header(&header_bytes(0x89, 125, true))
            .expect("ok")
            .expect("complete");
        assert_eq!(header.kind, FrameKind::Ping);
    }
}
