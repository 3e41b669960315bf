//! Measures the sans-IO codecs: WebSocket frame decode and encode (each beside tungstenite's
//! own codec on the same bytes), a plain 16 KiB copy at several source-to-destination distances,
//! and middleman message parse and head rewrite, with criterion.

/// The broker's own allocator, so the numbers are the binary's.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::hint::black_box;
use std::io::{self, Read, Write};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Bencher, BenchmarkId, Criterion, Throughput};
use middleman::ids::{ConnectionId, ShardId};
use middleman::protocol::message::{self, Limits, Sender};
use middleman::protocol::ws::{self, Decoder, Opcode, WsEvent};
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::{Bytes, Message, WebSocket};

/// Payload sizes: a small chat-sized message, a typical JSON document, a large one.
const PAYLOAD_SIZES: [usize; 3] = [64, 1024, 16 * 1024];

/// The broker's default `--max-message-bytes` (1 MiB); every payload here is far below it.
const MESSAGE_BYTES_MAX: usize = 1024 * 1024;

/// The parser limits at their command-line defaults.
const LIMITS: Limits = Limits { topic_bytes_max: 1024, headers_max: 64 };

/// A client's masking key; any value exercises the same unmasking code.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Printable ASCII, so the text frames pass both codecs' UTF-8 checks.
fn text_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// A final text frame as a client sends it (masked).
fn masked_client_frame(payload: &[u8]) -> Vec<u8> {
    middleman::testing::client_frame(0x81, payload, Some(MASK))
}

/// An in-memory socket that replays one frame: `read` copies it into the caller's buffer, as a
/// socket read copies into tungstenite's read buffer; writes are discarded.
struct Replay {
    frame: Vec<u8>,
    position: usize,
}

impl Read for Replay {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let left = &self.frame[self.position..];
        let n = left.len().min(out.len());
        out[..n].copy_from_slice(&left[..n]);
        self.position += n;
        Ok(n)
    }
}

impl Write for Replay {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Decoding one masked client text frame: header, checks, unmasking, UTF-8.
///
/// The baseline is `tungstenite::WebSocket::read` in the server role over [`Replay`]: the
/// fairest twin, because it is the lowest tungstenite API that does the same work as
/// `Decoder::decode` (`FrameSocket::read` does not unmask, check RSV bits or UTF-8). Both sides
/// pay one copy of the masked bytes per iteration: the decoder unmasks in place, so its buffer
/// is refilled, and tungstenite reads the frame from `Replay` into its own buffer.
///
/// Before each socket read tungstenite zero-fills the spare part of its read buffer, 128 KiB
/// by default. That is part of its codec, so the default config is the baseline; a second
/// run with the buffer sized to the frame shows how much of the gap is that fill.
fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_decode");
    for size in PAYLOAD_SIZES {
        let payload = text_payload(size);
        let masked = masked_client_frame(&payload);
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_with_input(BenchmarkId::new("middleman", size), &masked, |b, masked| {
            let mut decoder = Decoder::new(MESSAGE_BYTES_MAX);
            let mut buf = masked.clone();
            b.iter(|| {
                buf.copy_from_slice(masked);
                let decoded = decoder.decode(black_box(&mut buf));
                let Ok(Some((consumed, Some(WsEvent::Message { payload, .. })))) = decoded else {
                    panic!("a complete text frame decodes to a message: {decoded:?}");
                };
                black_box((consumed, payload));
            });
        });

        group.bench_with_input(BenchmarkId::new("tungstenite", size), &masked, |b, masked| {
            read_with_tungstenite(b, masked, WebSocketConfig::default());
        });
        // The read buffer cut to one frame: tungstenite zero-fills no more than the decoder's
        // buffer holds, so what is left of the gap is the codec itself.
        let sized = WebSocketConfig::default().read_buffer_size(masked.len());
        group.bench_with_input(
            BenchmarkId::new("tungstenite_frame_sized_buffer", size),
            &masked,
            |b, masked| read_with_tungstenite(b, masked, sized),
        );
    }
    group.finish();
}

/// Reads `masked` as a server with `WebSocket::read`, once per iteration.
fn read_with_tungstenite(b: &mut Bencher<'_>, masked: &[u8], config: WebSocketConfig) {
    let replay = Replay { frame: masked.to_vec(), position: 0 };
    let mut socket = WebSocket::from_raw_socket(replay, Role::Server, Some(config));
    b.iter(|| {
        socket.get_mut().position = 0;
        let message = socket.read();
        let Ok(Message::Text(text)) = message else {
            panic!("a complete text frame reads as a text message: {message:?}");
        };
        black_box(text);
    });
}

/// Encoding one final, unmasked server text frame into a reused buffer.
///
/// The baseline builds a tungstenite `Frame` around the same payload (a `Bytes` clone, a
/// reference count increment) and formats it; `Frame::format` is what tungstenite's own
/// writer calls.
fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("ws_encode");
    for size in PAYLOAD_SIZES {
        let payload = Bytes::from(text_payload(size));
        group.throughput(Throughput::Bytes(size as u64));

        group.bench_with_input(BenchmarkId::new("middleman", size), &payload, |b, payload| {
            let mut out = Vec::with_capacity(size + ws::HEADER_BYTES_MAX);
            b.iter(|| {
                out.clear();
                ws::encode_frame(Opcode::Text, black_box(payload), &mut out);
                black_box(&out);
            });
        });

        group.bench_with_input(BenchmarkId::new("tungstenite", size), &payload, |b, payload| {
            let mut out = Vec::with_capacity(size + ws::HEADER_BYTES_MAX);
            b.iter(|| {
                out.clear();
                let frame =
                    Frame::message(black_box(payload).clone(), OpCode::Data(Data::Text), true);
                frame.format(&mut out).expect("formatting into a Vec cannot fail");
                black_box(&out);
            });
        });
    }
    group.finish();
}

/// A 16 KiB copy whose destination lies `distance` bytes past its source modulo 4096.
///
/// The 16 KiB encodes above are such a copy at distance 4 (two page-aligned buffers and a
/// 4-byte frame header); this shows what the distance alone does to the C library's `memcpy`.
fn copy_distance(c: &mut Criterion) {
    const PAGE: usize = 4096;
    const LEN: usize = 16 * 1024;
    let mut group = c.benchmark_group("copy_16k_at_distance");
    group.throughput(Throughput::Bytes(LEN as u64));
    let source = text_payload(LEN + PAGE);
    let mut target = vec![0u8; LEN + 2 * PAGE];
    let page_start = |buffer: &[u8]| (PAGE - buffer.as_ptr() as usize % PAGE) % PAGE;
    let from = page_start(&source);
    let to = page_start(&target);
    for distance in [0, 4, 15, 16, 64] {
        group.bench_function(BenchmarkId::from_parameter(distance), |b| {
            b.iter(|| {
                let at = to + distance;
                target[at..at + LEN].copy_from_slice(black_box(&source[from..from + LEN]));
                black_box(&target);
            });
        });
    }
    group.finish();
}

/// A typical PUB: three headers and a 128-byte JSON body (its CRLF included).
fn typical_pub() -> Vec<u8> {
    let mut body = br#"{"symbol":"EURUSD","bid":1.08342,"ask":1.08351,"ts":1767225600123,"venue":"LMAX","seq":48213377,"pad":""#.to_vec();
    body.resize(128 - br#""}"#.len() - 2, b'x');
    body.extend_from_slice(b"\"}\r\n");
    assert_eq!(body.len(), 128);

    let mut input = Vec::new();
    input.extend_from_slice(b"PUB prices.fx.eurusd\r\n");
    input.extend_from_slice(b"Content-Type: application/json\r\n");
    input.extend_from_slice(b"Trace-Id: 4bf92f3577b34da6a3ce929d0e0e4736\r\n");
    input.extend_from_slice(b"Priority: high\r\n");
    input.extend_from_slice(b"\r\n");
    input.extend_from_slice(&body);
    input.extend_from_slice(b".\r\n");
    input
}

/// Parsing a typical PUB, and writing its relayed form (the head rewrite: sender headers
/// filtered, `Cid` and `Uid` added, body copied) into a reused buffer.
fn message(c: &mut Criterion) {
    let input = typical_pub();
    let mut group = c.benchmark_group("message");

    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_function("next_pub", |b| {
        b.iter(|| {
            let parsed = message::next(black_box(&input), LIMITS);
            let Some(Ok((message, rest))) = parsed else {
                panic!("the typical PUB parses: {parsed:?}");
            };
            black_box((message, rest));
        });
    });

    let (parsed, _) = message::next(&input, LIMITS)
        .expect("the input holds a message")
        .expect("the typical PUB parses");
    assert_eq!(parsed.headers.len(), 3);
    let cid = ConnectionId { epoch: 1_767_225_600, shard: ShardId(3), local: 48_213 }.encode();
    let sender = Sender { cid: &cid, uid: b"user-4711" };
    let relay_len = message::relay_len(&parsed, sender, None, None);
    group.throughput(Throughput::Bytes(relay_len as u64));
    group.bench_function("write_relay", |b| {
        let mut out = Vec::with_capacity(relay_len);
        b.iter(|| {
            out.clear();
            message::write_relay(black_box(&parsed), sender, None, None, &mut out);
            black_box(&out);
        });
    });
    group.finish();
}

/// Short runs: the whole suite is meant to finish in well under a minute.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode, encode, copy_distance, message
}
criterion_main!(benches);
