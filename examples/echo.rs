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

use std::io;

use bytes::BytesMut;
use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};
use monoio_codec::{Decoded, Decoder as _};
use monoio_http::h1::codec::decoder::RequestHeadDecoder;

use corecast::ws::{self, Decoder, Event, Flow, HandshakeError, OpCode};

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
    let response = match ws::upgrade_response(&head.method, head.version, &head.headers) {
        Ok(response) => response,
        Err(err) => return send_and_close(stream, err.error_response()).await,
    };
    send(&mut stream, response.to_vec()).await?;

    let mut decoder = Decoder::new(MAX_MESSAGE_BYTES);
    let mut out = Vec::new();
    // Frames the client sent right behind its request head.
    let mut closing = answer(&mut decoder, &mut head_bytes, &mut out);
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
        closing = answer(&mut decoder, &mut buf[..n], &mut out);
    }
}

/// Decodes one read and appends the answers to `out`: echoes, pongs, and the close frame
/// on a close or a protocol error. True when the connection must close once `out` is sent.
fn answer(decoder: &mut Decoder, data: &mut [u8], out: &mut Vec<u8>) -> bool {
    let mut closing = false;
    let result = decoder.feed(data, |event| {
        match event {
            Event::Text(payload) => echo(out, OpCode::Text, payload),
            Event::Binary(payload) => echo(out, OpCode::Binary, payload),
            Event::Ping(payload) => out.extend_from_slice(&ws::pong_frame(payload)),
            Event::Pong(_) => {}
            Event::Close { code, .. } => {
                match code {
                    Some(code) => out.extend_from_slice(&ws::close_frame(code, "")),
                    None => ws::write_frame_header(out, OpCode::Close, 0),
                }
                closing = true;
                return Flow::Stop;
            }
        }
        Flow::Continue
    });
    if let Err(err) = result {
        out.extend_from_slice(&ws::close_frame(err.close_code(), ""));
        closing = true;
    }
    closing
}

fn echo(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    ws::write_frame_header(out, opcode, payload.len());
    out.extend_from_slice(payload);
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
