//! Incremental, zero-copy-when-possible decoder for client-to-server frames.
//!
//! Bytes come in as they were read from the socket. A frame that lies wholly inside the
//! read is unmasked in place and handed out as a slice of it; only a frame cut by the end
//! of the read, or a message split into fragments, is copied (into [`Message`], or into
//! small inline arrays for headers and control payloads). Between messages the decoder
//! holds no heap memory, because a shard keeps tens of thousands of idle connections.

use super::control::parse_close;
use super::deflate::Inflater;
use super::header::{FrameKind, Header, MAX_CONTROL_PAYLOAD, MAX_HEADER_BYTES, parse_header};
use super::mask::{apply_mask, apply_mask_at};
use super::message::{Message, MessageKind};

pub use super::error::WsError;

/// One complete client message or control frame, as handed to `feed`'s callback.
/// Slices borrow either the caller's read buffer or the decoder's message buffer, and are
/// valid only during the callback.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete text message: unmasked and valid UTF-8. Mutable so the caller can parse
    /// JSON in place (simd-json) without another copy.
    Text(&'a mut [u8]),
    /// A complete binary message, unmasked.
    Binary(&'a mut [u8]),
    /// A ping (at most 125 bytes); answer with `pong_frame(payload)`.
    Ping(&'a [u8]),
    /// A pong; nothing to answer.
    Pong(&'a [u8]),
    /// The client is closing. `code` is `None` for an empty close payload, otherwise a valid
    /// code; `reason` is valid UTF-8. Echo a close frame and shut the connection down.
    Close { code: Option<u16>, reason: &'a str },
}

/// What the callback wants after an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Keep decoding the rest of the read.
    Continue,
    /// Stop at once: the connection is closing and the remaining bytes are discarded.
    Stop,
}

/// A frame whose header has been parsed but whose payload is still arriving.
#[derive(Debug, Clone, Copy)]
struct Partial {
    header: Header,
    /// Payload length; checked against the size limit, so it fits in memory.
    len: usize,
    /// Payload bytes already received (and unmasked).
    received: usize,
}

/// Incremental decoder for client-to-server frames of one connection.
///
/// After `feed` returns an error, or after the callback returned [`Flow::Stop`], the
/// connection is closing and the decoder must not be fed again.
#[derive(Debug)]
pub struct Decoder {
    /// Largest message (sum of its fragments) or frame payload accepted, in bytes.
    max_message_bytes: usize,
    /// Bytes of a header cut by the end of a read. At most 14 bytes, so inline: no heap.
    header_buf: [u8; MAX_HEADER_BYTES],
    /// How many bytes of `header_buf` are filled; 0 when no header is pending.
    header_len: u8,
    /// The frame whose payload was cut by the end of a read, if any.
    partial: Option<Partial>,
    /// Payload of a control frame cut by the end of a read. At most 125 bytes, so inline:
    /// a ping split across two reads costs no allocation.
    control_buf: [u8; MAX_CONTROL_PAYLOAD],
    /// The data message being assembled from fragments or from a cut frame.
    message: Message,
}

impl Decoder {
    /// A decoder refusing messages and frames over `max_message_bytes` with close code 1009.
    pub fn new(max_message_bytes: usize) -> Self {
        Decoder {
            max_message_bytes,
            header_buf: [0; MAX_HEADER_BYTES],
            header_len: 0,
            partial: None,
            control_buf: [0; MAX_CONTROL_PAYLOAD],
            message: Message::default(),
        }
    }

    /// True when no partial frame or fragmented message is buffered.
    pub fn is_idle(&self) -> bool {
        self.header_len == 0 && self.partial.is_none() && !self.message.is_open()
    }

    /// Heap bytes this decoder holds right now: 0 whenever it is idle. For memory accounting.
    pub fn heap_bytes(&self) -> usize {
        self.message.heap_bytes()
    }

    /// Decodes every complete frame in `data`, calling `on_event` for each complete data
    /// message or control frame. `data` is unmasked in place. Bytes of an incomplete trailing
    /// frame are kept and logically prefixed to the next call's data. Returns `Ok(())` at once
    /// when `on_event` returns [`Flow::Stop`]. On `Err`, send
    /// `close_frame(err.close_code(), "")` and close the connection.
    pub fn feed(
        &mut self,
        data: &mut [u8],
        on_event: impl FnMut(Event<'_>) -> Flow,
    ) -> Result<(), WsError> {
        self.decode(data, None, on_event)
    }

    /// [`Decoder::feed`] on a connection that negotiated permessage-deflate: a message
    /// whose first frame has RSV1 is inflated with `inflater` (reset per message, so it
    /// may be shared by many connections) up to the message limit, and handed out like any
    /// other. Without RSV1 a message is plain, as before.
    pub fn feed_inflating(
        &mut self,
        data: &mut [u8],
        inflater: &mut Inflater,
        on_event: impl FnMut(Event<'_>) -> Flow,
    ) -> Result<(), WsError> {
        self.decode(data, Some(inflater), on_event)
    }

    fn decode(
        &mut self,
        data: &mut [u8],
        mut inflater: Option<&mut Inflater>,
        mut on_event: impl FnMut(Event<'_>) -> Flow,
    ) -> Result<(), WsError> {
        let mut pos = 0;
        loop {
            if let Some(partial) = self.partial {
                let n = (partial.len - partial.received).min(data.len() - pos);
                let chunk = &mut data[pos..pos + n];
                pos += n;
                apply_mask_at(chunk, partial.header.mask, partial.received);
                let received = partial.received + n;
                if partial.header.kind.is_control() {
                    // `len` <= 125 was checked by `parse_header`, so this is inside the array.
                    self.control_buf[partial.received..received].copy_from_slice(chunk);
                } else {
                    self.message.extend(chunk)?;
                }
                if received < partial.len {
                    self.partial = Some(Partial {
                        received,
                        ..partial
                    });
                    return Ok(());
                }
                self.partial = None;
                let header = partial.header;
                let flow = if header.kind.is_control() {
                    deliver_control(header.kind, &self.control_buf[..received], &mut on_event)?
                } else if header.fin {
                    self.deliver_message(inflater.as_deref_mut(), &mut on_event)?
                } else {
                    Flow::Continue
                };
                if flow == Flow::Stop {
                    return Ok(());
                }
            }
            if pos == data.len() {
                return Ok(());
            }
            let Some(header) = self.next_header(data, &mut pos)? else {
                return Ok(());
            };
            let len = self.check(&header)?;
            // RSV1 marks the first frame of a compressed message, and only where
            // permessage-deflate was negotiated.
            if header.rsv1
                && (inflater.is_none()
                    || !matches!(header.kind, FrameKind::Text | FrameKind::Binary))
            {
                return Err(WsError::ReservedBits);
            }
            if len > data.len() - pos {
                // The payload is cut by the end of this read: the loop head copies what is
                // here and the next calls copy the rest.
                match header.kind {
                    FrameKind::Text => self.message.start(MessageKind::Text, header.rsv1),
                    FrameKind::Binary => self.message.start(MessageKind::Binary, header.rsv1),
                    _ => {}
                }
                if !header.kind.is_control() {
                    self.message.reserve_for(len);
                }
                self.partial = Some(Partial {
                    header,
                    len,
                    received: 0,
                });
                continue;
            }
            let payload = &mut data[pos..pos + len];
            pos += len;
            apply_mask(payload, header.mask);
            let flow = match header.kind {
                FrameKind::Close | FrameKind::Ping | FrameKind::Pong => {
                    deliver_control(header.kind, payload, &mut on_event)?
                }
                // A whole compressed message: inflated into the shared buffer.
                FrameKind::Text | FrameKind::Binary if header.fin && header.rsv1 => {
                    let text = header.kind == FrameKind::Text;
                    let inflater = inflater.as_deref_mut().ok_or(WsError::ReservedBits)?;
                    deliver_inflated(
                        inflater,
                        text,
                        payload,
                        self.max_message_bytes,
                        &mut on_event,
                    )?
                }
                // The common case: a whole unfragmented message, handed out without a copy.
                FrameKind::Text if header.fin => {
                    std::str::from_utf8(payload).map_err(|_| WsError::InvalidUtf8)?;
                    on_event(Event::Text(payload))
                }
                FrameKind::Binary if header.fin => on_event(Event::Binary(payload)),
                FrameKind::Text | FrameKind::Binary | FrameKind::Continuation => {
                    if header.kind == FrameKind::Text {
                        self.message.start(MessageKind::Text, header.rsv1);
                    } else if header.kind == FrameKind::Binary {
                        self.message.start(MessageKind::Binary, header.rsv1);
                    }
                    self.message.extend(payload)?;
                    if header.fin {
                        self.deliver_message(inflater.as_deref_mut(), &mut on_event)?
                    } else {
                        Flow::Continue
                    }
                }
            };
            if flow == Flow::Stop {
                return Ok(());
            }
        }
    }

    /// Parses the next header from `data[*pos..]`, completing a header cut by the previous
    /// read if there is one. `None`: the rest of `data` was stashed, more bytes are needed.
    fn next_header(&mut self, data: &[u8], pos: &mut usize) -> Result<Option<Header>, WsError> {
        let rest = &data[*pos..];
        let old = usize::from(self.header_len);
        if old == 0 {
            if let Some((header, size)) = parse_header(rest)? {
                *pos += size;
                return Ok(Some(header));
            }
            // A complete header is at most 14 bytes, so fewer than that are left here.
            let n = rest.len().min(MAX_HEADER_BYTES);
            self.header_buf[..n].copy_from_slice(&rest[..n]);
            self.header_len = n as u8;
            *pos = data.len();
            return Ok(None);
        }
        let take = (MAX_HEADER_BYTES - old).min(rest.len());
        self.header_buf[old..old + take].copy_from_slice(&rest[..take]);
        match parse_header(&self.header_buf[..old + take])? {
            Some((header, size)) => {
                // `old` bytes alone were not a header, so `size` > `old`.
                *pos += size.saturating_sub(old);
                self.header_len = 0;
                Ok(Some(header))
            }
            None => {
                self.header_len = (old + take) as u8;
                *pos += take;
                Ok(None)
            }
        }
    }

    /// Checks a header against the message state and the size limit; returns the payload
    /// length, which then fits in memory.
    fn check(&self, header: &Header) -> Result<usize, WsError> {
        match header.kind {
            FrameKind::Continuation if !self.message.is_open() => {
                return Err(WsError::UnexpectedContinuation);
            }
            FrameKind::Text | FrameKind::Binary if self.message.is_open() => {
                return Err(WsError::InterleavedMessage);
            }
            _ => {}
        }
        let buffered = if header.kind.is_control() {
            0
        } else {
            self.message.len()
        };
        let total = (buffered as u64).saturating_add(header.len);
        if total > self.max_message_bytes as u64 {
            return Err(WsError::TooBig {
                len: total,
                max: self.max_message_bytes,
            });
        }
        // total <= max_message_bytes, a usize.
        Ok(header.len as usize)
    }

    /// Hands the assembled message to the callback, then frees its buffer.
    fn deliver_message(
        &mut self,
        inflater: Option<&mut Inflater>,
        on_event: &mut impl FnMut(Event<'_>) -> Flow,
    ) -> Result<Flow, WsError> {
        let (kind, compressed, mut buf) = self.message.finish()?;
        if compressed {
            let inflater = inflater.ok_or(WsError::ReservedBits)?;
            let text = kind == MessageKind::Text;
            return deliver_inflated(inflater, text, &buf, self.max_message_bytes, on_event);
        }
        Ok(match kind {
            MessageKind::Text => on_event(Event::Text(&mut buf)),
            MessageKind::Binary => on_event(Event::Binary(&mut buf)),
        })
    }
}

/// Inflates a complete compressed message (bounded by `max`), checks text for UTF-8 and
/// hands it to the callback.
fn deliver_inflated(
    inflater: &mut Inflater,
    text: bool,
    data: &[u8],
    max: usize,
    on_event: &mut impl FnMut(Event<'_>) -> Flow,
) -> Result<Flow, WsError> {
    let plain = inflater.inflate(data, max)?;
    if text {
        std::str::from_utf8(plain).map_err(|_| WsError::InvalidUtf8)?;
        Ok(on_event(Event::Text(plain)))
    } else {
        Ok(on_event(Event::Binary(plain)))
    }
}

/// Validates a complete, unmasked control payload and hands it to the callback.
fn deliver_control(
    kind: FrameKind,
    payload: &[u8],
    on_event: &mut impl FnMut(Event<'_>) -> Flow,
) -> Result<Flow, WsError> {
    Ok(match kind {
        FrameKind::Ping => on_event(Event::Ping(payload)),
        FrameKind::Pong => on_event(Event::Pong(payload)),
        _ => {
            let (code, reason) = parse_close(payload)?;
            on_event(Event::Close { code, reason })
        }
    })
}

#[cfg(test)]
mod tests;
