//! Behaviour of [`Decoder`] as a connection sees it: what events come out of which bytes,
//! however the bytes are cut into reads.

use super::*;

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
const FIN: u8 = 0x80;
const CONT: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xa;

/// A masked client frame; `first` is FIN | opcode.
fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&MASK);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    out
}

/// An owned copy of an [`Event`], to compare after the callback returned.
#[derive(Debug, PartialEq, Eq, Clone)]
enum Got {
    Text(String),
    Binary(Vec<u8>),
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

fn own(event: Event<'_>) -> Got {
    match event {
        Event::Text(t) => Got::Text(String::from_utf8(t.to_vec()).expect("decoder checked UTF-8")),
        Event::Binary(b) => Got::Binary(b.to_vec()),
        Event::Ping(p) => Got::Ping(p.to_vec()),
        Event::Pong(p) => Got::Pong(p.to_vec()),
        Event::Close { code, reason } => Got::Close(code, reason.to_owned()),
    }
}

/// Feeds each chunk in turn (as separate reads) and collects the events.
fn feed_chunks(decoder: &mut Decoder, chunks: &[&[u8]]) -> Result<Vec<Got>, WsError> {
    let mut got = Vec::new();
    for chunk in chunks {
        let mut read = chunk.to_vec();
        decoder.feed(&mut read, |event| {
            got.push(own(event));
            Flow::Continue
        })?;
    }
    Ok(got)
}

fn decode(bytes: &[u8]) -> Result<Vec<Got>, WsError> {
    feed_chunks(&mut Decoder::new(1 << 20), &[bytes])
}

/// A stream exercising every path: short, 16-bit, fragmented, interleaved control, close.
fn mixed_stream() -> (Vec<u8>, Vec<Got>) {
    let big: Vec<u8> = (0..300u32).map(|i| i as u8).collect();
    let parts = [
        frame(FIN | TEXT, b"Hello"),
        frame(FIN | BINARY, &big),
        frame(TEXT, "κό".as_bytes()),
        frame(FIN | PING, b"are you there"),
        frame(CONT, &"σμε".as_bytes()[..3]),
        frame(FIN | CONT, &"σμε".as_bytes()[3..]),
        frame(FIN | PONG, b""),
        frame(FIN | TEXT, b""),
        frame(FIN | CLOSE, b"\x03\xe8bye"),
    ];
    let expected = vec![
        Got::Text("Hello".into()),
        Got::Binary(big),
        Got::Ping(b"are you there".to_vec()),
        Got::Text("κόσμε".into()),
        Got::Pong(vec![]),
        Got::Text(String::new()),
        Got::Close(Some(1000), "bye".into()),
    ];
    (parts.concat(), expected)
}

#[test]
fn rfc_example_masked_text_frame_is_unmasked_in_place() {
    let mut read = vec![
        0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    let range = read.as_ptr_range();
    let mut decoder = Decoder::new(1024);
    let mut seen = None;
    decoder
        .feed(&mut read, |event| {
            if let Event::Text(text) = event {
                assert!(range.contains(&text.as_ptr()), "handed out without a copy");
                seen = Some(text.to_vec());
            }
            Flow::Continue
        })
        .expect("valid frame");
    assert_eq!(seen.as_deref(), Some(&b"Hello"[..]));
    assert!(decoder.is_idle());
}

#[test]
fn several_frames_in_one_feed_come_out_in_order() {
    let (bytes, expected) = mixed_stream();
    assert_eq!(decode(&bytes), Ok(expected));
}

#[test]
fn stream_split_into_two_feeds_at_every_offset_decodes_the_same() {
    let (bytes, expected) = mixed_stream();
    for cut in 0..=bytes.len() {
        let mut decoder = Decoder::new(1 << 20);
        let got = feed_chunks(&mut decoder, &[&bytes[..cut], &bytes[cut..]]);
        assert_eq!(got.as_ref(), Ok(&expected), "cut at {cut}");
        assert!(decoder.is_idle(), "cut at {cut}");
        assert_eq!(decoder.heap_bytes(), 0, "cut at {cut}");
    }
}

#[test]
fn stream_fed_one_byte_at_a_time_decodes_the_same() {
    let (bytes, expected) = mixed_stream();
    let chunks: Vec<&[u8]> = bytes.chunks(1).collect();
    assert_eq!(
        feed_chunks(&mut Decoder::new(1 << 20), &chunks),
        Ok(expected)
    );
}

#[test]
fn fragmented_text_with_interleaved_ping_delivers_ping_first() {
    let bytes = [
        frame(TEXT, b"Hel"),
        frame(FIN | PING, b"p"),
        frame(FIN | CONT, b"lo"),
    ]
    .concat();
    assert_eq!(
        decode(&bytes),
        Ok(vec![Got::Ping(b"p".to_vec()), Got::Text("Hello".into())])
    );
}

#[test]
fn sixteen_and_sixty_four_bit_lengths_decode() {
    for len in [125usize, 126, 65535, 65536, 70000] {
        let payload: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
        assert_eq!(
            decode(&frame(FIN | BINARY, &payload)),
            Ok(vec![Got::Binary(payload)])
        );
    }
}

#[test]
fn invalid_utf8_in_text_frame_is_1007() {
    let got = decode(&frame(FIN | TEXT, &[b'a', 0xff, b'b']));
    assert_eq!(got.map_err(|e| e.close_code()), Err(1007));
}

#[test]
fn utf8_split_across_fragments_is_accepted() {
    let euro = "€".as_bytes();
    let bytes = [
        frame(TEXT, &euro[..1]),
        frame(CONT, &euro[1..2]),
        frame(FIN | CONT, &euro[2..]),
    ];
    assert_eq!(decode(&bytes.concat()), Ok(vec![Got::Text("€".into())]));
}

#[test]
fn invalid_utf8_split_across_fragments_fails_before_the_message_ends() {
    let mut decoder = Decoder::new(1024);
    // 0xce opens a two-byte character; 0xff can never continue it.
    let first = frame(TEXT, &[b'o', b'k', 0xce]);
    assert_eq!(feed_chunks(&mut decoder, &[&first]), Ok(vec![]));
    let second = frame(CONT, &[0xff]);
    let got = feed_chunks(&mut decoder, &[&second]);
    assert_eq!(got, Err(WsError::InvalidUtf8));
}

#[test]
fn invalid_utf8_fails_inside_a_frame_still_arriving() {
    let bytes = frame(FIN | TEXT, &[b'a', 0xff, b'b', b'c', b'd']);
    let mut decoder = Decoder::new(1024);
    let got = feed_chunks(&mut decoder, &[&bytes[..bytes.len() - 2]]);
    assert_eq!(got, Err(WsError::InvalidUtf8));
}

#[test]
fn text_ending_inside_a_character_is_1007() {
    let bytes = [frame(TEXT, b"a"), frame(FIN | CONT, &"€".as_bytes()[..2])].concat();
    assert_eq!(decode(&bytes).map_err(|e| e.close_code()), Err(1007));
}

#[test]
fn continuation_without_message_is_protocol_error() {
    assert_eq!(
        decode(&frame(FIN | CONT, b"x")),
        Err(WsError::UnexpectedContinuation)
    );
}

#[test]
fn new_message_inside_fragmented_message_is_protocol_error() {
    let bytes = [frame(TEXT, b"a"), frame(FIN | BINARY, b"b")].concat();
    assert_eq!(decode(&bytes), Err(WsError::InterleavedMessage));
}

#[test]
fn close_code_validation() {
    let close = |payload: &[u8]| decode(&frame(FIN | CLOSE, payload));
    assert_eq!(close(b""), Ok(vec![Got::Close(None, String::new())]));
    assert_eq!(
        close(b"\x0f\xa0"),
        Ok(vec![Got::Close(Some(4000), String::new())])
    );
    assert_eq!(close(b"\x03").map_err(|e| e.close_code()), Err(1002));
    assert_eq!(close(b"\x03\xed").map_err(|e| e.close_code()), Err(1002)); // 1005
    assert_eq!(
        close(b"\x03\xe8\xff").map_err(|e| e.close_code()),
        Err(1007)
    );
}

#[test]
fn oversized_frame_is_1009_without_allocation() {
    let mut decoder = Decoder::new(1000);
    // Only the header of a 1 MiB frame arrives: it is refused before any payload.
    let header = &frame(FIN | BINARY, &vec![0; 1 << 20])[..14];
    let got = feed_chunks(&mut decoder, &[header]);
    assert_eq!(got.map_err(|e| e.close_code()), Err(1009));
    assert_eq!(decoder.heap_bytes(), 0);
}

#[test]
fn oversized_fragmented_message_is_1009() {
    let bytes = [frame(BINARY, &[0; 600]), frame(FIN | CONT, &[0; 600])].concat();
    let got = feed_chunks(&mut Decoder::new(1000), &[&bytes]);
    assert_eq!(
        got,
        Err(WsError::TooBig {
            len: 1200,
            max: 1000
        })
    );
}

#[test]
fn message_of_exactly_the_limit_is_accepted() {
    let got = feed_chunks(&mut Decoder::new(10), &[&frame(FIN | BINARY, &[7; 10])]);
    assert_eq!(got, Ok(vec![Got::Binary(vec![7; 10])]));
}

#[test]
fn stop_discards_the_rest_of_the_read() {
    let mut read = [frame(FIN | CLOSE, b""), frame(FIN | TEXT, b"late")].concat();
    let mut events = 0;
    Decoder::new(1024)
        .feed(&mut read, |_| {
            events += 1;
            Flow::Stop
        })
        .expect("valid frames");
    assert_eq!(events, 1);
}

#[test]
fn buffers_are_freed_after_a_partial_frame_completes() {
    let bytes = frame(FIN | BINARY, &[5; 1000]);
    let mut decoder = Decoder::new(4096);
    assert_eq!(feed_chunks(&mut decoder, &[&bytes[..500]]), Ok(vec![]));
    assert!(!decoder.is_idle());
    assert!(decoder.heap_bytes() > 0);
    let got = feed_chunks(&mut decoder, &[&bytes[500..]]);
    assert_eq!(got, Ok(vec![Got::Binary(vec![5; 1000])]));
    assert!(decoder.is_idle());
    assert_eq!(decoder.heap_bytes(), 0);
}

#[test]
fn buffers_are_freed_after_a_fragmented_message_completes() {
    let mut decoder = Decoder::new(4096);
    assert_eq!(
        feed_chunks(&mut decoder, &[&frame(TEXT, b"abc")]),
        Ok(vec![])
    );
    assert!(!decoder.is_idle());
    let got = feed_chunks(&mut decoder, &[&frame(FIN | CONT, b"def")]);
    assert_eq!(got, Ok(vec![Got::Text("abcdef".into())]));
    assert!(decoder.is_idle());
    assert_eq!(decoder.heap_bytes(), 0);
}

#[test]
fn partial_header_and_partial_ping_are_not_idle_and_use_no_heap() {
    let ping = frame(FIN | PING, b"0123456789");
    let mut decoder = Decoder::new(1024);
    for cut in 1..ping.len() {
        assert_eq!(feed_chunks(&mut decoder, &[&ping[..cut]]), Ok(vec![]));
        assert!(!decoder.is_idle(), "cut {cut}");
        assert_eq!(decoder.heap_bytes(), 0, "cut {cut}");
        let got = feed_chunks(&mut decoder, &[&ping[cut..]]);
        assert_eq!(
            got,
            Ok(vec![Got::Ping(b"0123456789".to_vec())]),
            "cut {cut}"
        );
        assert!(decoder.is_idle());
    }
}

#[test]
fn idle_decoder_is_small() {
    // 19,000 idle connections: the decoder itself must stay a few hundred bytes.
    assert!(
        std::mem::size_of::<Decoder>() <= 256,
        "{}",
        std::mem::size_of::<Decoder>()
    );
}

/// RSV1: the "compressed" bit of permessage-deflate.
const RSV1: u8 = 0x40;

/// Raw deflate of `text` as a client sends it: fresh stream, tail removed.
fn deflated(text: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    crate::ws::Deflater::default().compress_into(text, 15, &mut out);
    out
}

/// Feeds each chunk with an inflater, as a connection that negotiated deflate.
fn feed_inflating(decoder: &mut Decoder, chunks: &[&[u8]]) -> Result<Vec<Got>, WsError> {
    let mut inflater = crate::ws::Inflater::default();
    let mut got = Vec::new();
    for chunk in chunks {
        let mut read = chunk.to_vec();
        decoder.feed_inflating(&mut read, &mut inflater, |event| {
            got.push(own(event));
            Flow::Continue
        })?;
    }
    Ok(got)
}

#[test]
fn compressed_messages_are_inflated_whole_cut_or_fragmented() {
    let text = "{\"event\":\"client-x\",\"data\":\"κόσμε κόσμε κόσμε\"}".repeat(20);
    let data = deflated(text.as_bytes());
    let whole = frame(FIN | RSV1 | TEXT, &data);
    let plain = frame(FIN | TEXT, b"plain");
    let mut stream = whole.clone();
    stream.extend_from_slice(&plain);
    let expected = vec![Got::Text(text.clone()), Got::Text("plain".into())];
    for cut in 0..stream.len() {
        let mut decoder = Decoder::new(1 << 20);
        let got = feed_inflating(&mut decoder, &[&stream[..cut], &stream[cut..]]);
        assert_eq!(got.as_ref(), Ok(&expected), "cut {cut}");
        assert!(decoder.is_idle());
    }
    // RSV1 on the first fragment only; a ping between fragments.
    let (a, b) = data.split_at(data.len() / 2);
    let fragmented = [
        frame(RSV1 | TEXT, a),
        frame(FIN | PING, b"p"),
        frame(FIN | CONT, b),
    ]
    .concat();
    let got = feed_inflating(&mut Decoder::new(1 << 20), &[&fragmented]);
    assert_eq!(
        got,
        Ok(vec![Got::Ping(b"p".to_vec()), Got::Text(text.clone())])
    );
    let binary = frame(FIN | RSV1 | BINARY, &deflated(&[0xff; 100]));
    let got = feed_inflating(&mut Decoder::new(1 << 20), &[&binary]);
    assert_eq!(got, Ok(vec![Got::Binary(vec![0xff; 100])]));
}

#[test]
fn rsv1_where_deflate_does_not_allow_it_is_a_protocol_error() {
    let data = deflated(b"hello");
    // Not negotiated: no inflater.
    assert_eq!(
        decode(&frame(FIN | RSV1 | TEXT, &data)),
        Err(WsError::ReservedBits)
    );
    for bad in [
        [frame(RSV1 | TEXT, &data), frame(FIN | RSV1 | CONT, b"")].concat(),
        frame(FIN | RSV1 | PING, b""),
        frame(FIN | RSV1 | CLOSE, b""),
    ] {
        let got = feed_inflating(&mut Decoder::new(1 << 20), &[&bad]);
        assert_eq!(got, Err(WsError::ReservedBits));
        assert_eq!(WsError::ReservedBits.close_code(), 1002);
    }
}

#[test]
fn compressed_data_is_checked_once_inflated() {
    let bad_utf8 = frame(FIN | RSV1 | TEXT, &deflated(&[b'a', 0xff]));
    let got = feed_inflating(&mut Decoder::new(1 << 20), &[&bad_utf8]);
    assert_eq!(got, Err(WsError::InvalidUtf8));
    let garbage = frame(FIN | RSV1 | TEXT, &[0xff, 0xff, 0xff, 0xff]);
    let got = feed_inflating(&mut Decoder::new(1 << 20), &[&garbage]);
    assert_eq!(got.map_err(|e| e.close_code()), Err(1007));
}

#[test]
fn a_compressed_message_inflating_past_the_limit_is_too_big() {
    // 10 MB of zeros is about 10 KB of deflate: small on the wire, refused once inflated.
    let data = deflated(&vec![b'0'; 10 << 20]);
    assert!(data.len() < 20_000, "{}", data.len());
    let bomb = frame(FIN | RSV1 | TEXT, &data);
    let max = 256 * 1024;
    let got = feed_inflating(&mut Decoder::new(max), &[&bomb]);
    assert_eq!(got.map_err(|e| e.close_code()), Err(1009));
}
