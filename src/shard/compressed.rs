//! The compressed frames of one delivery (permessage-deflate): made on first need by the
//! shard's compressor, then shared by refcount like the plain frame.

use bytes::Bytes;

use super::Shard;
use crate::metrics::Counter;

/// The frames of one delivery for connections that negotiated permessage-deflate: each
/// window size's compressed frame is made on first need, then shared by refcount like
/// the plain frame. A frame below the threshold, or one compression does not shrink,
/// goes plain to everyone.
pub(super) struct Compressed<'a> {
    shard: &'a Shard,
    plain: &'a Bytes,
    /// Whether the frame is large enough to compress (and compression is on).
    eligible: bool,
    /// By window bits 8 to 15: the compressed frame once made (the plain one when
    /// compressing did not make it smaller).
    frames: [Option<Bytes>; 8],
}

impl<'a> Compressed<'a> {
    pub(super) fn new(shard: &'a Shard, plain: &'a Bytes) -> Self {
        let config = &shard.config;
        let eligible = config.ws_compression
            && crate::ws::server_payload_len(plain)
                .is_some_and(|len| len >= config.ws_compression_min_bytes.max(1));
        Compressed {
            shard,
            plain,
            eligible,
            frames: Default::default(),
        }
    }

    /// The frame to queue for a connection with this negotiation.
    pub(super) fn for_conn(&mut self, deflate: Option<crate::ws::Deflate>) -> &Bytes {
        let Some(deflate) = deflate.filter(|_| self.eligible) else {
            return self.plain;
        };
        let bits = deflate.window_bits.clamp(8, 15);
        let slot = &mut self.frames[usize::from(bits - 8)];
        slot.get_or_insert_with(|| {
            let shard = self.shard;
            let made = shard.deflater.borrow_mut().compress_frame(self.plain, bits);
            match made {
                Some(frame) if frame.len() < self.plain.len() => {
                    let header =
                        |f: &Bytes| f.len() - crate::ws::server_payload_len(f).unwrap_or(0);
                    let plain_payload = self.plain.len() - header(self.plain);
                    shard.metrics.inc(Counter::WsFramesCompressed, 1);
                    shard
                        .metrics
                        .inc(Counter::WsCompressionBytesIn, plain_payload as u64);
                    shard.metrics.inc(
                        Counter::WsCompressionBytesOut,
                        (frame.len() - header(&frame)) as u64,
                    );
                    frame
                }
                _ => self.plain.clone(),
            }
        })
    }
}
