//! permessage-deflate data (RFC 7692 section 7.2): compressing server messages and
//! inflating client messages, each with a fresh context (both sides agreed to no context
//! takeover, see `extension`).
//!
//! A [`Deflater`] and an [`Inflater`] belong to a shard, not to a connection: they are
//! reset between messages, so thousands of compressed connections cost two zlib streams
//! per shard and an idle connection holds no compression memory at all.

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

use super::encode::{OpCode, frame_header_len, write_header};
use super::error::WsError;

/// What every message's compressed data ends with after a sync flush; it is removed
/// before sending and put back before inflating (RFC 7692 7.2.1 and 7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Bytes reserved in front of compressed data for the largest header (2 + 8).
const HEADROOM: usize = 10;
/// The deflate level. On ordinary JSON text 3 compresses within a few percent of zlib's
/// default 6 (10 KB to 19 % against 17 %) for a third to a sixth of the CPU; 1 is
/// cheaper still but leaves 29 %.
const LEVEL: u32 = 3;
/// First output buffer of an inflate; it doubles up to the message limit.
const INFLATE_FIRST_BYTES: usize = 16 * 1024;
/// An inflate buffer larger than this is given back after the message instead of kept.
const INFLATE_KEEP_BYTES: usize = 256 * 1024;

/// Compresses messages, one fresh deflate stream per message; one stream per window
/// size is kept and reset between messages.
#[derive(Default)]
pub struct Deflater {
    /// Streams for window bits 9 to 15, created on first use.
    streams: [Option<Compress>; 7],
}

impl Deflater {
    /// The compressed frame of a plain server frame (FIN, unmasked, as `frame` and the
    /// Pusher encoder write them): same opcode, RSV1 set, payload deflated with a window
    /// of at most `window_bits`. `None` when `plain` is not such a frame.
    pub fn compress_frame(&mut self, plain: &[u8], window_bits: u8) -> Option<Bytes> {
        let (first, payload) = split_server_frame(plain)?;
        let mut out = Vec::with_capacity(HEADROOM + payload.len() / 2 + 64);
        out.resize(HEADROOM, 0);
        self.compress_into(payload, window_bits, &mut out);
        let len = out.len() - HEADROOM;
        let start = HEADROOM - frame_header_len(len);
        let mut header = Vec::with_capacity(HEADROOM);
        write_header(&mut header, first | 0x40, len);
        out[start..HEADROOM].copy_from_slice(&header);
        Some(Bytes::from(out).slice(start..))
    }

    /// A whole compressed frame of `opcode` (text or binary) with this payload.
    pub fn frame(&mut self, opcode: OpCode, payload: &[u8], window_bits: u8) -> Bytes {
        let mut data = Vec::with_capacity(payload.len() / 2 + 64);
        self.compress_into(payload, window_bits, &mut data);
        let mut out = Vec::with_capacity(frame_header_len(data.len()) + data.len());
        write_header(&mut out, 0xc0 | opcode as u8, data.len());
        out.extend_from_slice(&data);
        Bytes::from(out)
    }

    /// Appends the deflate data of `payload` to `out`: a fresh stream, sync-flushed, its
    /// trailing `00 00 ff ff` removed.
    pub fn compress_into(&mut self, payload: &[u8], window_bits: u8, out: &mut Vec<u8>) {
        // zlib has no 256-byte window for raw deflate; a 512-byte one never reaches back
        // further than 250 bytes (its window less the 262-byte lookahead), so what it
        // writes is valid for a peer that asked for 8 bits.
        let bits = window_bits.clamp(9, 15);
        let slot = &mut self.streams[usize::from(bits - 9)];
        let stream = slot.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::new(LEVEL), false, bits)
        });
        stream.reset();
        let start = out.len();
        let mut input = payload;
        loop {
            if out.capacity() - out.len() < 64 {
                out.reserve(out.capacity().max(256));
            }
            let before = stream.total_in();
            // A raw deflate stream with a sync flush cannot fail: the input is any bytes.
            let _ = stream.compress_vec(input, out, FlushCompress::Sync);
            let taken = (stream.total_in() - before) as usize;
            input = &input[taken..];
            // Done when all input is in and the flush left room unused.
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        if out[start..].ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
    }
}

/// The first header byte and the payload of an unmasked server frame.
fn split_server_frame(frame: &[u8]) -> Option<(u8, &[u8])> {
    let (&first, rest) = frame.split_first()?;
    let (&len_byte, rest) = rest.split_first()?;
    if len_byte & 0x80 != 0 {
        return None;
    }
    let (len, rest) = match len_byte {
        126 => {
            let (n, rest) = rest.split_at_checked(2)?;
            (usize::from(u16::from_be_bytes([n[0], n[1]])), rest)
        }
        127 => {
            let (n, rest) = rest.split_at_checked(8)?;
            let n: [u8; 8] = n.try_into().ok()?;
            (usize::try_from(u64::from_be_bytes(n)).ok()?, rest)
        }
        n => (usize::from(n), rest),
    };
    (rest.len() == len).then_some((first & 0x8f, rest))
}

/// The payload length of an unmasked server frame (what the compression threshold is
/// compared with); `None` when `frame` is not one.
#[must_use]
pub fn server_payload_len(frame: &[u8]) -> Option<usize> {
    split_server_frame(frame).map(|(_, payload)| payload.len())
}

/// Inflates client messages, each with a fresh stream, into one reused buffer that never
/// grows past the message limit.
pub struct Inflater {
    stream: Decompress,
    out: Vec<u8>,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            stream: Decompress::new_with_window_bits(false, 15),
            out: Vec::new(),
        }
    }
}

impl Inflater {
    /// Inflates one message's data (without its `00 00 ff ff` tail). Stops as soon as
    /// the output passes `max` bytes, so a tiny message that would inflate to gigabytes
    /// costs at most `max + 1` bytes of buffer: [`WsError::TooBig`] (close 1009).
    /// Data that is not deflate is [`WsError::InvalidDeflate`].
    pub fn inflate(&mut self, data: &[u8], max: usize) -> Result<&mut [u8], WsError> {
        if self.out.capacity() > INFLATE_KEEP_BYTES {
            self.out = Vec::new();
        }
        self.out.clear();
        self.stream.reset(false);
        let limit = max.saturating_add(1);
        'input: for mut input in [data, &TAIL[..]] {
            loop {
                if self.out.len() == self.out.capacity() {
                    let want = (self.out.capacity() * 2)
                        .max(INFLATE_FIRST_BYTES)
                        .min(limit);
                    self.out.reserve_exact(want - self.out.len());
                }
                let (before_in, before_out) = (self.stream.total_in(), self.stream.total_out());
                let status = self
                    .stream
                    .decompress_vec(input, &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| WsError::InvalidDeflate)?;
                if self.out.len() > max {
                    return Err(WsError::TooBig {
                        len: self.out.len() as u64,
                        max,
                    });
                }
                let taken = (self.stream.total_in() - before_in) as usize;
                input = &input[taken..];
                if status == Status::StreamEnd {
                    // A final block: the message ends here, whatever follows.
                    break 'input;
                }
                let room = self.out.len() < self.out.capacity();
                let progress = taken > 0 || self.stream.total_out() > before_out;
                if room && (input.is_empty() || !progress) {
                    break;
                }
            }
        }
        Ok(&mut self.out[..])
    }

    /// Bytes the output buffer holds on to between messages.
    #[must_use]
    pub fn heap_bytes(&self) -> usize {
        self.out.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::text_frame;

    fn ordinary_text(len: usize) -> String {
        let words = [
            "the",
            "channel",
            "event",
            "message",
            "user",
            "order",
            "status",
            "shipped",
            "price",
            "update",
            "account",
            "notification",
            "received",
            "quantity",
            "total",
        ];
        let mut text = String::from("{\"items\":[");
        let mut i = 0u32;
        while text.len() < len {
            i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            let w = words[(i >> 16) as usize % words.len()];
            text.push_str(&format!(
                "{{\"id\":{},\"note\":\"{w} {} {w}\"}},",
                i % 9973,
                words[(i >> 8) as usize % words.len()]
            ));
        }
        text.push_str("{}]}");
        text
    }

    fn inflate_all(data: &[u8]) -> Vec<u8> {
        Inflater::default()
            .inflate(data, usize::MAX - 1)
            .expect("inflates")
            .to_vec()
    }

    #[test]
    fn a_compressed_frame_inflates_byte_exact_to_the_plain_payload() {
        let text = ordinary_text(10_000);
        let plain = text_frame(text.as_bytes());
        let mut deflater = Deflater::default();
        for bits in [8, 9, 12, 15] {
            let frame = deflater.compress_frame(&plain, bits).expect("server frame");
            assert_eq!(frame[0], 0xc1, "FIN, RSV1, text");
            let (first, payload) = split_server_frame(&frame).expect("valid frame");
            assert_eq!(first, 0x81);
            assert!(!payload.ends_with(&TAIL));
            assert!(payload.len() * 3 < text.len(), "{} bytes", payload.len());
            assert_eq!(inflate_all(payload), text.as_bytes(), "window {bits}");
        }
        // The stream is reset between messages: the same input gives the same output.
        let a = deflater.compress_frame(&plain, 15).expect("frame");
        let b = deflater.compress_frame(&plain, 15).expect("frame");
        assert_eq!(a, b);
    }

    #[test]
    fn small_empty_and_binary_frames_round_trip() {
        let mut deflater = Deflater::default();
        for payload in [&b""[..], b"a", b"{\"event\":\"x\"}", &[0xff; 300]] {
            let frame = deflater.frame(OpCode::Binary, payload, 15);
            assert_eq!(frame[0], 0xc2);
            let (_, data) = split_server_frame(&frame).expect("valid");
            assert_eq!(inflate_all(data), payload);
        }
        assert!(deflater.compress_frame(b"\x81\x05abc", 15).is_none(), "cut");
        assert!(
            deflater.compress_frame(b"\x81\x85abcdefghi", 15).is_none(),
            "masked"
        );
    }

    #[test]
    fn a_zip_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let mut data = Vec::new();
        Deflater::default().compress_into(&zeros, 15, &mut data);
        assert!(data.len() < 20_000, "{} bytes", data.len());
        let mut inflater = Inflater::default();
        let max = 256 * 1024;
        let err = inflater.inflate(&data, max).map(|b| b.len());
        assert_eq!(
            err,
            Err(WsError::TooBig {
                len: max as u64 + 1,
                max
            })
        );
        assert!(
            inflater.heap_bytes() <= max + 1,
            "{}",
            inflater.heap_bytes()
        );
        // The same inflater goes on with the next message, and large buffers are given
        // back rather than kept.
        let mut small = Vec::new();
        Deflater::default().compress_into(b"hello", 15, &mut small);
        assert_eq!(inflater.inflate(&small, max).expect("ok"), b"hello");
        assert!(inflater.heap_bytes() <= INFLATE_KEEP_BYTES);
        // Exactly at the limit is fine.
        let mut exact = Vec::new();
        Deflater::default().compress_into(&zeros[..max], 15, &mut exact);
        assert_eq!(inflater.inflate(&exact, max).expect("ok").len(), max);
    }

    #[test]
    fn garbage_is_invalid_deflate() {
        let mut inflater = Inflater::default();
        assert_eq!(
            inflater.inflate(&[0xff, 0xff, 0xff], 1000).map(|b| b.len()),
            Err(WsError::InvalidDeflate)
        );
        assert_eq!(inflater.inflate(&[0x00], 1000).map(|b| b.len()), Ok(0));
    }
}
