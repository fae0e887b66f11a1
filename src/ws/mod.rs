//! RFC 6455 WebSocket, sans-IO: bytes in, events and frames out, no runtime imports.
//!
//! # Layout
//!
//! - `handshake`: checks the HTTP/1.1 upgrade request and builds the `101` answer.
//! - `decoder`: turns the bytes of client reads into complete messages and control
//!   frames, enforcing the RFC rules Autobahn tests; the connection driver calls
//!   [`Decoder::feed`] after every read.
//! - `header`: stateless frame header checks, on top of tungstenite's `FrameHeader::parse`.
//! - `message`: the one buffer a fragmented (or cut) message is assembled in, with
//!   incremental UTF-8 validation.
//! - `control`: close frame payload validation.
//! - `mask`: payload unmasking.
//! - `extension`: permessage-deflate negotiation (RFC 7692): offers parsed, answer built.
//! - `deflate`: permessage-deflate data: shared per-shard compressor and bounded inflater.
//! - `encode`: server frames, unmasked and unfragmented, encoded once and shared.
//! - `error`: [`WsError`] and the close code each violation maps to.

mod control;
mod decoder;
mod deflate;
mod encode;
mod error;
mod extension;
mod handshake;
mod header;
mod mask;
mod message;

pub use decoder::{Decoder, Event, Flow, WsError};
pub use deflate::{Deflater, Inflater, server_payload_len};
pub use encode::{
    OpCode, binary_frame, close_frame, frame, frame_header_len, ping_frame, pong_frame, text_frame,
    write_frame_header,
};
pub use error::{INVALID_PAYLOAD, MESSAGE_TOO_BIG, PROTOCOL_ERROR, is_valid_close_code};
pub use extension::{Deflate, PERMESSAGE_DEFLATE, negotiate, negotiate_value};
pub use handshake::{HandshakeError, upgrade_response, upgrade_response_with};
pub use mask::apply_mask;
