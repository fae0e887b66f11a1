//! Server-to-client frames. Server frames are never masked and never fragmented, so a frame
//! is a fixed function of its payload: the server encodes a broadcast once and shares the
//! same `Bytes` with every subscriber.

use bytes::Bytes;

use super::header::MAX_CONTROL_PAYLOAD;

/// Frame opcodes (RFC 6455 5.2) the server writes.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    Continuation = 0,
    Text = 1,
    Binary = 2,
    Close = 8,
    Ping = 9,
    Pong = 10,
}

/// Size of the header [`write_frame_header`] writes for `payload_len`: 2, 4 or 10 bytes.
pub fn frame_header_len(payload_len: usize) -> usize {
    match payload_len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    }
}

/// Appends the header of an unmasked FIN frame with this payload length (2, 4 or 10 bytes).
pub fn write_frame_header(out: &mut Vec<u8>, opcode: OpCode, payload_len: usize) {
    write_header(out, 0x80 | opcode as u8, payload_len);
}

/// Appends an unmasked header whose first byte (FIN, RSV bits, opcode) is `first`.
pub(crate) fn write_header(out: &mut Vec<u8>, first: u8, payload_len: usize) {
    match payload_len {
        0..=125 => out.extend_from_slice(&[first, payload_len as u8]),
        126..=0xffff => {
            let [hi, lo] = (payload_len as u16).to_be_bytes();
            out.extend_from_slice(&[first, 126, hi, lo]);
        }
        _ => {
            out.extend_from_slice(&[first, 127]);
            out.extend_from_slice(&(payload_len as u64).to_be_bytes());
        }
    }
}

/// A complete frame, header and payload in one allocation.
pub fn frame(opcode: OpCode, payload: &[u8]) -> Bytes {
    let mut out = Vec::with_capacity(frame_header_len(payload.len()) + payload.len());
    write_frame_header(&mut out, opcode, payload.len());
    out.extend_from_slice(payload);
    Bytes::from(out)
}

/// A text frame: header + payload in one allocation, shared by every subscriber.
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame(OpCode::Text, payload)
}

/// A binary frame, header + payload in one allocation.
pub fn binary_frame(payload: &[u8]) -> Bytes {
    frame(OpCode::Binary, payload)
}

/// The pong answering a ping with this payload. A ping's payload is at most 125 bytes;
/// anything longer is cut to 125 so the pong is still a valid control frame.
pub fn pong_frame(payload: &[u8]) -> Bytes {
    frame(
        OpCode::Pong,
        &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
    )
}

/// A ping with this payload (cut to 125 bytes), for liveness checks.
pub fn ping_frame(payload: &[u8]) -> Bytes {
    frame(
        OpCode::Ping,
        &payload[..payload.len().min(MAX_CONTROL_PAYLOAD)],
    )
}

/// A close frame with this status code and reason. The reason is cut at a character
/// boundary to the 123 bytes a control frame leaves it.
pub fn close_frame(code: u16, reason: &str) -> Bytes {
    let mut end = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let reason = &reason.as_bytes()[..end];
    let mut out = Vec::with_capacity(2 + 2 + reason.len());
    write_frame_header(&mut out, OpCode::Close, 2 + reason.len());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(reason);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_7_16_and_64_bit_lengths() {
        let cases: [(usize, &[u8]); 5] = [
            (0, &[0x81, 0]),
            (125, &[0x81, 125]),
            (126, &[0x81, 126, 0, 126]),
            (65535, &[0x81, 126, 0xff, 0xff]),
            (65536, &[0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ];
        for (len, expected) in cases {
            let mut out = Vec::new();
            write_frame_header(&mut out, OpCode::Text, len);
            assert_eq!(out, expected, "len {len}");
            assert_eq!(frame_header_len(len), expected.len());
        }
    }

    #[test]
    fn text_frame_is_unmasked_fin_text_in_one_buffer() {
        let frame = text_frame(b"Hello");
        assert_eq!(&frame[..], b"\x81\x05Hello");
        let big = text_frame(&[b'a'; 300]);
        assert_eq!(&big[..4], &[0x81, 126, 1, 44]);
        assert_eq!(big.len(), 304);
    }

    #[test]
    fn pong_echoes_the_ping_payload() {
        assert_eq!(&pong_frame(b"abc")[..], b"\x8a\x03abc");
        assert_eq!(pong_frame(&[0; 200]).len(), 2 + 125);
    }

    #[test]
    fn close_frame_carries_code_and_reason() {
        assert_eq!(&close_frame(1000, "")[..], b"\x88\x02\x03\xe8");
        assert_eq!(&close_frame(1002, "bad")[..], b"\x88\x05\x03\xeabad");
    }

    #[test]
    fn close_reason_is_cut_at_a_character_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let frame = close_frame(4000, &long);
        assert_eq!(frame[1] as usize, frame.len() - 2);
        assert!(frame.len() - 2 <= 125);
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
