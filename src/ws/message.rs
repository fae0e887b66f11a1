//! Assembly of a data message whose bytes do not sit in one read: a fragmented message,
//! or a single frame cut by the end of a read.
//!
//! This is the only place client payload is copied. The buffer is a plain `Vec` that is
//! handed to the caller and dropped when the message completes, so a connection between
//! messages holds no heap memory.

use super::error::WsError;

/// How much capacity to reserve up front for a frame still arriving: enough that a large
/// frame arriving in 64 KiB reads is not reallocated on every read, small enough that a
/// client announcing a big frame and then stalling does not pin memory it never sent.
const RESERVE_AHEAD_BYTES: usize = 64 * 1024;

/// Type of a data message, taken from its first frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    Text,
    Binary,
}

/// The data message being assembled; `kind` is `None` between messages.
#[derive(Debug, Default)]
pub struct Message {
    /// Opcode of the first frame; `Some` while a message is open, so a stray continuation
    /// or an interleaved new message can be refused.
    kind: Option<MessageKind>,
    /// The first frame had RSV1 (permessage-deflate): `buf` holds deflate data, checked
    /// for UTF-8 only once inflated.
    compressed: bool,
    /// Unmasked payload received so far.
    buf: Vec<u8>,
    /// Length of the prefix of `buf` known to be valid UTF-8 (text only). What follows is at
    /// most an incomplete character cut by a fragment boundary, re-checked when more arrives,
    /// so invalid text fails as soon as its bad byte arrives instead of at the end.
    utf8_valid: usize,
}

impl Message {
    /// True while a message has started and not finished.
    pub fn is_open(&self) -> bool {
        self.kind.is_some()
    }

    /// Bytes received so far for the open message.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Heap bytes held (capacity of the buffer).
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity()
    }

    /// Opens a message of type `kind`, compressed or not; the caller has checked none
    /// was open.
    pub fn start(&mut self, kind: MessageKind, compressed: bool) {
        self.kind = Some(kind);
        self.compressed = compressed;
        self.utf8_valid = 0;
    }

    /// Prepares room for `incoming` more bytes of a frame that is still arriving.
    pub fn reserve_for(&mut self, incoming: usize) {
        self.buf.reserve(incoming.min(RESERVE_AHEAD_BYTES));
    }

    /// Appends unmasked payload bytes; a text message fails here on the first invalid byte.
    pub fn extend(&mut self, chunk: &[u8]) -> Result<(), WsError> {
        self.buf.extend_from_slice(chunk);
        if self.kind == Some(MessageKind::Text) && !self.compressed {
            self.utf8_valid += utf8_prefix_len(&self.buf[self.utf8_valid..])?;
        }
        Ok(())
    }

    /// Closes the message and hands over its bytes and whether they are compressed,
    /// leaving no heap memory behind. An uncompressed text message must not end inside a
    /// character.
    pub fn finish(&mut self) -> Result<(MessageKind, bool, Vec<u8>), WsError> {
        let kind = self.kind.take().unwrap_or(MessageKind::Binary);
        let compressed = std::mem::take(&mut self.compressed);
        let buf = std::mem::take(&mut self.buf);
        if kind == MessageKind::Text && !compressed && self.utf8_valid != buf.len() {
            return Err(WsError::InvalidUtf8);
        }
        self.utf8_valid = 0;
        Ok((kind, compressed, buf))
    }
}

/// Length of the valid UTF-8 prefix of `bytes`, when all that follows it is the start of a
/// character that more bytes could complete; an error when a byte can never be valid.
pub fn utf8_prefix_len(bytes: &[u8]) -> Result<usize, WsError> {
    match std::str::from_utf8(bytes) {
        Ok(_) => Ok(bytes.len()),
        Err(e) if e.error_len().is_none() => Ok(e.valid_up_to()),
        Err(_) => Err(WsError::InvalidUtf8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_prefix_stops_before_an_incomplete_character() {
        let euro = "€".as_bytes(); // e2 82 ac
        assert_eq!(utf8_prefix_len(b"abc"), Ok(3));
        assert_eq!(utf8_prefix_len(&[b'a', euro[0], euro[1]]), Ok(1));
        assert_eq!(utf8_prefix_len(&[b'a', 0xff]), Err(WsError::InvalidUtf8));
        assert_eq!(utf8_prefix_len(&[0xe2, 0x28]), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn text_split_inside_a_character_is_accepted_when_completed() {
        let mut message = Message::default();
        message.start(MessageKind::Text, false);
        let text = "κόσμε".as_bytes();
        for byte in text {
            message
                .extend(std::slice::from_ref(byte))
                .expect("valid so far");
        }
        let (kind, _, buf) = message.finish().expect("complete text");
        assert_eq!((kind, buf.as_slice()), (MessageKind::Text, text));
        assert!(!message.is_open());
        assert_eq!(message.heap_bytes(), 0);
    }

    #[test]
    fn text_ending_inside_a_character_is_invalid() {
        let mut message = Message::default();
        message.start(MessageKind::Text, false);
        message
            .extend(&"€".as_bytes()[..2])
            .expect("incomplete is fine mid-message");
        assert_eq!(message.finish(), Err(WsError::InvalidUtf8));
    }

    #[test]
    fn binary_is_not_checked_for_utf8() {
        let mut message = Message::default();
        message.start(MessageKind::Binary, false);
        message
            .extend(&[0xff, 0xfe])
            .expect("binary accepts any byte");
        assert_eq!(message.finish().map(|(_, _, b)| b), Ok(vec![0xff, 0xfe]));
    }
}
