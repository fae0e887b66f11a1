//! WebSocket echo server on `corecast::ws`, the endpoint the Autobahn|Testsuite
//! fuzzingclient drives to check RFC 6455 conformance of the decoder and the handshake.
//!
//! ```text
//! cargo build --release --example echo
//! target/release/examples/echo [port]          # default 9001, on 127.0.0.1
//! # then point the Autobahn|Testsuite fuzzingclient at ws://127.0.0.1:9001:
//! # examples/autobahn/README.md says how
//! ```
//!
//! The per-connection loop is the shape the real connection driver takes: read, feed the
//! decoder, queue answers, write, and close after a close frame or a protocol error.
//! A client offering permessage-deflate gets it (no context takeover either way): its
//! compressed messages are inflated and every echo goes back compressed.

use std::io;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio_codec::{Decoded, Decoder as _};
use monoio_http::h1::codec::decoder::RequestHeadDecoder;

use corecast::ws::{
    self, Decoder, Deflate, Deflater, Event, Flow, HandshakeError, Inflater, OpCode,
};

/// Autobahn's 9.x cases send messages of up to 16 MiB.
const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Bytes asked for per read.
const READ_BUF_BYTES: usize = 64 * 1024;
/// A request head larger than this is refused rather than buffered forever.
const MAX_HEAD_BYTES: usize = 16 * 1024;

#[monoio::main(driver = "fusion", enable_timer = true)]
async fn main() -> io::Result<()> {
    let port: u16 = match std::env::args().nth(1) {
        Some(arg) => arg
            .parse()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("port {arg}: {e}")))?,
        None => 9001,
    };
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("echo listening on ws://127.0.0.1:{port}");
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                monoio::spawn(async move {
                    if let Err(err) = serve(stream).await {
                        eprintln!("connection: {err}");
                    }
                });
            }
            Err(err) => eprintln!("accept: {err}"),
        }
    }
}

/// One connection: the upgrade handshake, then echo until a close or an error.
async fn serve(mut stream: TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buf = Vec::with_capacity(READ_BUF_BYTES);
    let mut head_bytes = BytesMut::new();
    let head = loop {
        match RequestHeadDecoder.decode(&mut head_bytes) {
            Ok(Decoded::Some(head)) => break head,
            Ok(_) if head_bytes.len() < MAX_HEAD_BYTES => {}
            _ => {
                return send_and_close(stream, HandshakeError::NotWebSocket.error_response()).await;
            }
        }
        let n;
        (n, buf) = read(&mut stream, buf).await?;
        if n == 0 {
            return Ok(());
        }
        head_bytes.extend_from_slice(&buf[..n]);
    };
    let deflate = ws::negotiate(&head.headers);
    let response = match ws::upgrade_response_with(
        &head.method,
        head.version,
        &head.headers,
        deflate.as_ref(),
    ) {
        Ok(response) => response,
        Err(err) => return send_and_close(stream, err.error_response()).await,
    };
    send(&mut stream, response.to_vec()).await?;

    let mut conn = Echo {
        decoder: Decoder::new(MAX_MESSAGE_BYTES),
        deflate: deflate.map(|d| (d, Deflater::default(), Inflater::default())),
    };
    let mut out = Vec::new();
    // Frames the client sent right behind its request head.
    let mut closing = conn.answer(&mut head_bytes, &mut out);
    loop {
        if !out.is_empty() {
            out = send(&mut stream, out).await?;
            out.clear();
        }
        if closing {
            return stream.shutdown().await;
        }
        let n;
        (n, buf) = read(&mut stream, buf).await?;
        if n == 0 {
            return Ok(());
        }
        closing = conn.answer(&mut buf[..n], &mut out);
    }
}

/// One connection's decoder and, when negotiated, its deflate state.
struct Echo {
    decoder: Decoder,
    deflate: Option<(Deflate, Deflater, Inflater)>,
}

impl Echo {
    /// Decodes one read and appends the answers to `out`: echoes, pongs, and the close
    /// frame on a close or a protocol error. True when the connection must close once
    /// `out` is sent.
    fn answer(&mut self, data: &mut [u8], out: &mut Vec<u8>) -> bool {
        let mut closing = false;
        let result = match self.deflate.as_mut() {
            None => self
                .decoder
                .feed(data, |event| on_event(event, None, out, &mut closing)),
            Some((agreed, deflater, inflater)) => {
                let bits = agreed.window_bits;
                self.decoder.feed_inflating(data, inflater, |event| {
                    on_event(event, Some((deflater, bits)), out, &mut closing)
                })
            }
        };
        if let Err(err) = result {
            out.extend_from_slice(&ws::close_frame(err.close_code(), ""));
            closing = true;
        }
        closing
    }
}

/// Appends the answer to one event; data messages are compressed when `deflate` is given.
fn on_event(
    event: Event<'_>,
    deflate: Option<(&mut Deflater, u8)>,
    out: &mut Vec<u8>,
    closing: &mut bool,
) -> Flow {
    match event {
        Event::Text(payload) => echo(out, OpCode::Text, payload, deflate),
        Event::Binary(payload) => echo(out, OpCode::Binary, payload, deflate),
        Event::Ping(payload) => out.extend_from_slice(&ws::pong_frame(payload)),
        Event::Pong(_) => {}
        Event::Close { code, .. } => {
            match code {
                Some(code) => out.extend_from_slice(&ws::close_frame(code, "")),
                None => ws::write_frame_header(out, OpCode::Close, 0),
            }
            *closing = true;
            return Flow::Stop;
        }
    }
    Flow::Continue
}

fn echo(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8], deflate: Option<(&mut Deflater, u8)>) {
    match deflate {
        Some((deflater, bits)) => out.extend_from_slice(&deflater.frame(opcode, payload, bits)),
        None => {
            ws::write_frame_header(out, opcode, payload.len());
            out.extend_from_slice(payload);
        }
    }
}

/// Reads once into `buf` (from its start); returns the byte count and the buffer.
async fn read(stream: &mut TcpStream, buf: Vec<u8>) -> io::Result<(usize, Vec<u8>)> {
    let (result, buf) = stream.read(buf).await;
    Ok((result?, buf))
}

/// Writes all of `bytes` and hands the buffer back for reuse.
async fn send(stream: &mut TcpStream, bytes: Vec<u8>) -> io::Result<Vec<u8>> {
    let (result, bytes) = stream.write_all(bytes).await;
    result?;
    Ok(bytes)
}

async fn send_and_close(mut stream: TcpStream, response: bytes::Bytes) -> io::Result<()> {
    send(&mut stream, response.to_vec()).await?;
    stream.shutdown().await
}
