//! Checks the fuzz targets' properties in the normal test run, on stable, without libFuzzer.
//! How: the targets' bodies (copied) over `fuzz/corpus/` and 21 000 xorshift mutations of it.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;

/// Mutated inputs per target: about 20 000 over the three.
const MUTATIONS: usize = 7_000;

/// Bytes that matter to some parser: frame opcodes and lengths, line ends, separators.
const INTERESTING: &[u8] = b"\x00\x01\x02\x08\x09\x0a\x7e\x7f\x80\x81\x82\x88\x89\xff\r\n:. \t";

#[test]
fn ws_decoder_properties_hold_on_the_corpus_and_mutations() {
    check_corpus_and_mutations("ws_decoder", ws_decoder::run);
}

#[test]
fn handshake_properties_hold_on_the_corpus_and_mutations() {
    check_corpus_and_mutations("handshake", handshake::run);
}

#[test]
fn message_properties_hold_on_the_corpus_and_mutations() {
    check_corpus_and_mutations("message", message::run);
}

/// The modules below must stay copies of the fuzz targets: compares them with the files,
/// ignoring white space and the trailing commas rustfmt adds when it wraps at another indent.
#[test]
fn the_copies_match_the_fuzz_targets() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let read = |path: &str| {
        let path = root.join(path);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let normalise = |code: &str| {
        let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
        code.replace(",)", ")").replace(",]", "]").replace(",}", "}")
    };
    let this = read("tests/fuzz_smoke.rs");
    for target in ["ws_decoder", "handshake", "message"] {
        let original = read(&format!("fuzz/fuzz_targets/{target}.rs"));
        let (_, body) = original.split_once("use libfuzzer_sys::fuzz_target;").expect("entry");
        let body = body
            .replace("fuzz_target!(|data: &[u8]| run(data));", "")
            .replace(" (`tests/fuzz_smoke.rs` has a copy).\nfn run(", ".\npub fn run(");
        let start = this.find(&format!("\nmod {target} {{\n")).expect("module") + 1;
        let module = &this[start..];
        let module = &module[module.find('{').expect("{") + 1..module.find("\n}\n").expect("}")];
        assert_eq!(
            normalise(module),
            normalise(&body),
            "tests/fuzz_smoke.rs `mod {target}` is no longer a copy of \
             fuzz/fuzz_targets/{target}.rs: regenerate it with `python3 fuzz/copy_to_smoke_test.py`"
        );
    }
}

/// Runs `run` on every seed of `target`, then on `MUTATIONS` mutations of them; a failure
/// names the input as a byte string that can be saved and replayed with `cargo fuzz run`.
fn check_corpus_and_mutations(target: &str, run: fn(&[u8])) {
    let seeds = corpus(target);
    for (name, input) in &seeds {
        check_one(target, name, input, run);
    }
    let mut rng =
        XorShift(target.bytes().fold(0x5EED_F00D, |h, b| h.rotate_left(5) ^ u64::from(b)));
    for i in 0..MUTATIONS {
        let input = mutate(&mut rng, &seeds);
        check_one(target, &format!("mutation {i}"), &input, run);
    }
}

fn check_one(target: &str, what: &str, input: &[u8], run: fn(&[u8])) {
    if catch_unwind(AssertUnwindSafe(|| run(input))).is_err() {
        panic!(
            "fuzz target `{target}` fails on {what} (the panic above says why); input:\n\
             b\"{}\"",
            input.escape_ascii()
        );
    }
}

/// The checked-in seeds of `target`, sorted by file name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .collect();
    paths.sort();
    assert!(paths.len() >= 12, "{}: only {} seeds", dir.display(), paths.len());
    paths
        .into_iter()
        .map(|path| {
            let name = path.file_name().expect("file name").to_string_lossy().into_owned();
            let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, bytes)
        })
        .collect()
}

/// xorshift64: deterministic, dependency-free randomness.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A seed with one to four edits: bit flips, interesting bytes set or inserted, bytes
/// removed, a piece repeated, the end cut off, or a piece of another seed spliced in.
fn mutate(rng: &mut XorShift, seeds: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut input = seeds[rng.below(seeds.len())].1.clone();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(input.len() + 1);
        let interesting = INTERESTING[rng.below(INTERESTING.len())];
        match rng.below(8) {
            0 if at < input.len() => input[at] ^= 1 << rng.below(8),
            1 if at < input.len() => input[at] = interesting,
            2 => input.insert(at, interesting),
            3 if at < input.len() => {
                input.remove(at);
            }
            4 => {
                let len = rng.below(input.len() - at + 1).min(64);
                let piece = input[at..at + len].to_vec();
                let to = rng.below(input.len() + 1);
                input.splice(to..to, piece);
            }
            5 if at > 3 => input.truncate(at),
            6 => {
                let other = &seeds[rng.below(seeds.len())].1;
                let from = rng.below(other.len() + 1);
                let len = rng.below(other.len() - from + 1).min(256);
                input.splice(at..at, other[from..from + len].iter().copied());
            }
            _ if at < input.len() => input[at] = rng.next() as u8,
            _ => input.push(interesting),
        }
    }
    input
}

/// A copy of `fuzz/fuzz_targets/ws_decoder.rs` without the libFuzzer entry point.
mod ws_decoder {
    use middleman::protocol::ws::{
        CloseCode, Decoder, WsEvent, CLOSE_REASON_BYTES_MAX, CONTROL_PAYLOAD_BYTES_MAX,
    };

    /// Message size limits to try: the edges of the three length encodings, and the default.
    const LIMITS: [usize; 13] = [0, 1, 2, 5, 6, 125, 126, 127, 1000, 4096, 65535, 65536, 1 << 20];

    /// Largest piece size for the chunked decoder, picked by the seed (1 is byte by byte).
    const CHUNK_MAX: [usize; 8] = [1, 2, 3, 7, 16, 64, 512, 4096];

    #[derive(Clone, Debug, PartialEq, Eq)]
    enum Seen {
        Message(bool, Vec<u8>),
        Ping(Vec<u8>),
        Pong(Vec<u8>),
        Close(Option<u16>, Vec<u8>),
        /// The close code of the error that ended the stream.
        Error(u16),
    }

    /// What decoding a whole stream gave: the events in order, and the bytes not consumed.
    #[derive(Debug, PartialEq, Eq)]
    struct Outcome {
        seen: Vec<Seen>,
        left: usize,
    }

    /// The whole check for one input.
    pub fn run(data: &[u8]) {
        let Some((&[limit, seed], stream)) = data.split_first_chunk::<2>() else { return };
        let limit = LIMITS[usize::from(limit) % LIMITS.len()];

        let model = model(limit, stream);
        let whole = decode_in_pieces(limit, stream, std::iter::once(stream.len()));
        assert_eq!(whole, model, "decoder (whole input) disagrees with the model");

        // Piece sizes from the seed; long inputs get longer pieces so a run stays fast.
        let chunk_max = CHUNK_MAX[usize::from(seed & 7)].max(stream.len() / 64);
        let mut rng = XorShift(u64::from(seed >> 3).wrapping_add(stream.len() as u64) | 1);
        let mut ends = Vec::new();
        let mut end = 0;
        while end < stream.len() {
            end = (end + 1 + rng.below(chunk_max)).min(stream.len());
            ends.push(end);
        }
        let pieces = decode_in_pieces(limit, stream, ends.into_iter());
        assert_eq!(pieces, whole, "the outcome depends on how the input was split");
    }

    /// Decodes `stream` delivered up to each of `ends` in turn, as the connection's reader does,
    /// checking the decoder's contract on every call.
    fn decode_in_pieces(limit: usize, stream: &[u8], ends: impl Iterator<Item = usize>) -> Outcome {
        let mut decoder = Decoder::new(limit);
        let mut buf: Vec<u8> = Vec::new();
        let mut seen = Vec::new();
        let mut fed = 0;
        for end in ends {
            buf.extend_from_slice(&stream[fed..end]);
            fed = end;
            let mut used = 0;
            loop {
                let before = buf[used..].to_vec();
                let given = buf.len() - used;
                match decoder.decode(&mut buf[used..]) {
                    Ok(None) => {
                        assert_eq!(buf[used..], before[..], "Ok(None) changed the buffer");
                        break;
                    }
                    Ok(Some((consumed, event))) => {
                        assert!(consumed > 0, "consumed nothing but returned Some");
                        assert!(consumed <= given, "consumed {consumed} of {given} bytes");
                        if let Some(event) = event {
                            seen.push(check(&event, limit));
                        }
                        used += consumed;
                    }
                    Err(error) => {
                        seen.push(Seen::Error(error.close_code().0));
                        return Outcome { seen, left: 0 };
                    }
                }
            }
            buf.drain(..used);
        }
        Outcome { seen, left: buf.len() }
    }

    /// Checks what every event must satisfy, and returns an owned copy.
    fn check(event: &WsEvent<'_>, limit: usize) -> Seen {
        match *event {
            WsEvent::Message { binary, payload } => {
                assert!(
                    payload.len() <= limit,
                    "{}-byte message over the limit {limit}",
                    payload.len()
                );
                assert!(binary || std::str::from_utf8(payload).is_ok(), "text message not UTF-8");
                Seen::Message(binary, payload.to_vec())
            }
            WsEvent::Ping(payload) => {
                assert!(payload.len() <= CONTROL_PAYLOAD_BYTES_MAX);
                Seen::Ping(payload.to_vec())
            }
            WsEvent::Pong(payload) => {
                assert!(payload.len() <= CONTROL_PAYLOAD_BYTES_MAX);
                Seen::Pong(payload.to_vec())
            }
            WsEvent::Close { code, reason } => {
                assert!(reason.len() <= CLOSE_REASON_BYTES_MAX);
                assert!(std::str::from_utf8(reason).is_ok(), "close reason not UTF-8");
                match code {
                    Some(code) => assert!(CloseCode(code).is_allowed(), "close code {code}"),
                    None => assert!(reason.is_empty()),
                }
                Seen::Close(code, reason.to_vec())
            }
        }
    }

    /// RFC 6455 server-side decoding written as plainly as possible, on the whole stream.
    ///
    /// Checks in the order the decoder documents: opcode, RSV bits, mask, control frame rules,
    /// fragmentation order, size (all from the header, before the payload is there), then the
    /// payload (close payload, UTF-8).
    fn model(limit: usize, stream: &[u8]) -> Outcome {
        const PROTOCOL_ERROR: u16 = 1002;
        let mut seen = Vec::new();
        let mut at = 0;
        // `Some((binary, bytes so far))` inside a fragmented message.
        let mut message: Option<(bool, Vec<u8>)> = None;
        let error = |mut seen: Vec<Seen>, code| {
            seen.push(Seen::Error(code));
            Outcome { seen, left: 0 }
        };
        loop {
            let rest = &stream[at..];
            let [b0, b1, ..] = *rest else { break };
            let (len, mut header_len) = match b1 & 0x7f {
                126 if rest.len() >= 4 => (u64::from(u16::from_be_bytes([rest[2], rest[3]])), 4),
                127 if rest.len() >= 10 => {
                    (u64::from_be_bytes(rest[2..10].try_into().expect("8 bytes")), 10)
                }
                126 | 127 => break,
                n => (u64::from(n), 2),
            };
            let masked = b1 & 0x80 != 0;
            if masked {
                header_len += 4;
            }
            if rest.len() < header_len {
                break;
            }
            let fin = b0 & 0x80 != 0;
            let opcode = b0 & 0x0f;
            let so_far = message.as_ref().map_or(0, |(_, bytes)| bytes.len() as u64);
            let refused = match opcode {
                3..=7 | 11..=15 => true,
                _ if b0 & 0x70 != 0 || !masked => true,
                8..=10 => !fin || len > 125,
                0 => message.is_none(),
                _ => message.is_some(),
            };
            if refused {
                return error(seen, PROTOCOL_ERROR);
            }
            if opcode < 8 && so_far.saturating_add(len) > limit as u64 {
                return error(seen, 1009);
            }
            if ((rest.len() - header_len) as u64) < len {
                break;
            }
            let len = len as usize;
            let mask = &rest[header_len - 4..header_len];
            let payload: Vec<u8> = rest[header_len..header_len + len]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ mask[i % 4])
                .collect();
            at += header_len + len;
            match opcode {
                8 => match payload.as_slice() {
                    [] => seen.push(Seen::Close(None, Vec::new())),
                    [_] => return error(seen, PROTOCOL_ERROR),
                    [high, low, reason @ ..] => {
                        let code = u16::from_be_bytes([*high, *low]);
                        let sendable = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                        if !sendable || std::str::from_utf8(reason).is_err() {
                            return error(seen, PROTOCOL_ERROR);
                        }
                        seen.push(Seen::Close(Some(code), reason.to_vec()));
                    }
                },
                9 => seen.push(Seen::Ping(payload)),
                10 => seen.push(Seen::Pong(payload)),
                _ => {
                    let (binary, mut bytes) = match message.take() {
                        Some(started) => started,
                        None => (opcode == 2, Vec::new()),
                    };
                    bytes.extend_from_slice(&payload);
                    if !fin {
                        message = Some((binary, bytes));
                        continue;
                    }
                    if !binary && std::str::from_utf8(&bytes).is_err() {
                        return error(seen, 1007);
                    }
                    seen.push(Seen::Message(binary, bytes));
                }
            }
        }
        Outcome { seen, left: stream.len() - at }
    }

    /// xorshift64: the piece sizes, reproducible from the input alone.
    struct XorShift(u64);

    impl XorShift {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }
}

/// A copy of `fuzz/fuzz_targets/handshake.rs` without the libFuzzer entry point.
mod handshake {
    use middleman::protocol::handshake::{parse, Upgrade, BAD_REQUEST, REQUEST_TOO_LARGE};
    use tungstenite::handshake::derive_accept_key;

    /// The whole check for one input.
    pub fn run(data: &[u8]) {
        let Some((&[low, high, cut], request)) = data.split_first_chunk::<3>() else { return };
        let limit = 1 + usize::from(u16::from_le_bytes([low, high])) % (16 << 10);

        let answer = parse(request, limit);
        match &answer {
            Upgrade::Incomplete => {
                assert!(
                    request.len() < limit,
                    "incomplete at {} bytes, limit {limit}",
                    request.len()
                )
            }
            Upgrade::Reject { response } => {
                assert!(*response == BAD_REQUEST || *response == REQUEST_TOO_LARGE, "{response:?}")
            }
            Upgrade::Accept { consumed, response, origin } => {
                assert!(
                    *consumed > 0 && *consumed <= request.len().min(limit),
                    "consumed {consumed}"
                );
                let head = &request[..*consumed];
                check_101(head, response);
                if origin.is_some() {
                    assert!(contains_ignore_case(head, b"origin"), "origin from nowhere");
                }
                assert_eq!(parse(head, limit), answer, "the head alone gives another answer");
            }
        }

        // A prefix: the reader parses whatever has arrived so far and stops at the first answer.
        let prefix = &request[..usize::from(cut) * request.len() / 256];
        match parse(prefix, limit) {
            Upgrade::Incomplete => {}
            early => assert_eq!(early, answer, "the answer depends on how the bytes arrived"),
        }
    }

    /// Checks the `101 Switching Protocols` response to the request head `head`.
    fn check_101(head: &[u8], response: &[u8]) {
        let response = std::str::from_utf8(response).expect("101 is UTF-8");
        assert!(response.is_ascii(), "{response:?}");
        let lines = response.strip_suffix("\r\n\r\n").expect("101 ends with a blank line");
        let mut lines = lines.split("\r\n");
        assert_eq!(lines.next(), Some("HTTP/1.1 101 Switching Protocols"));
        let mut accept = None;
        for line in lines {
            let (name, value) = line.split_once(": ").unwrap_or_else(|| panic!("{line:?}"));
            assert!(!value.contains(['\r', '\n']), "{line:?}");
            let name = name.to_ascii_lowercase();
            assert!(
                name != "sec-websocket-extensions" && name != "sec-websocket-protocol",
                "negotiated {line:?}"
            );
            if name == "sec-websocket-accept" {
                accept = Some(value.to_owned());
            }
        }
        let accept = accept.expect("Sec-WebSocket-Accept");
        // The key the request sent, taken from any line that names it (httparse decides which
        // lines are headers; this only needs one candidate to match).
        let derived_from_a_sent_key = head.split(|&b| b == b'\n').any(|line| {
            let Some(colon) = line.iter().position(|&b| b == b':') else { return false };
            let name = line[..colon].trim_ascii();
            let value = line[colon + 1..].trim_ascii();
            name.eq_ignore_ascii_case(b"sec-websocket-key") && derive_accept_key(value) == accept
        });
        assert!(derived_from_a_sent_key, "accept key {accept:?} matches no Sec-WebSocket-Key sent");
    }

    fn contains_ignore_case(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w.eq_ignore_ascii_case(needle))
    }
}

/// A copy of `fuzz/fuzz_targets/message.rs` without the libFuzzer entry point.
mod message {
    use middleman::protocol::message::{next, relay_len, write_relay, Header, Limits, Sender};

    /// A cid as the broker writes it: 20 characters of `0-9a-v`.
    const CID: &[u8] = b"0123456789abcdefghij";
    /// Uids a service may set with `INT UID` (header values: no LF, no surrounding blanks).
    const UIDS: [&[u8]; 4] = [b"", b"alice", b"b\xc3\xb6b the builder", b"x:y"];
    /// `ReqID` values the broker may write on a RES (the requester's, from a header value).
    const REQ_IDS: [Option<&[u8]>; 4] = [None, Some(b""), Some(b"abc-1"), Some(b"r e q")];
    const RIDS: [Option<u64>; 4] = [None, Some(0), Some(12_345), Some(u64::MAX)];

    /// The whole check for one input.
    pub fn run(data: &[u8]) {
        let Some((&[topic, headers, options], payload)) = data.split_first_chunk::<3>() else {
            return;
        };
        let limits = Limits {
            topic_bytes_max: if topic == 0 { 1024 } else { usize::from(topic % 64) + 1 },
            headers_max: if headers == 0 { 64 } else { usize::from(headers % 12) },
        };
        let sender = Sender { cid: CID, uid: UIDS[usize::from(options & 3)] };
        let req_id = REQ_IDS[usize::from(options >> 2 & 3)];
        let rid = RIDS[usize::from(options >> 4 & 3)];
        let text = std::str::from_utf8(payload).is_ok();

        let mut input = payload;
        while let Some(parsed) = next(input, limits) {
            let Ok((message, rest)) = parsed else { break };
            assert!(rest.len() < input.len(), "no progress");
            assert!(input.ends_with(rest), "rest is not a suffix");
            let target = message.target;
            assert!(!target.is_empty() && target.len() <= limits.topic_bytes_max);
            assert!(!target.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)), "{target:?}");
            assert!(message.headers.len() <= limits.headers_max);
            for header in &message.headers {
                assert!(!header.name.is_empty() && !header.line.contains(&b'\n'), "{header:?}");
            }

            let mut out = b"before".to_vec();
            write_relay(&message, sender, req_id, rid, &mut out);
            let relayed = &out[b"before".len()..];
            assert_eq!(relayed.len(), relay_len(&message, sender, req_id, rid), "relay_len");
            assert!(!text || std::str::from_utf8(relayed).is_ok(), "relayed text is not UTF-8");

            // The relay adds up to four headers of its own (ReqID, Cid, Uid, Rid).
            let relay_limits = Limits { headers_max: limits.headers_max + 4, ..limits };
            let (again, after) = match next(relayed, relay_limits) {
                Some(Ok(parsed)) => parsed,
                other => panic!("relayed message does not parse: {other:?}"),
            };
            assert!(after.is_empty(), "relayed bytes after the message");
            assert_eq!(
                (again.word, again.command, again.target),
                (message.word, message.command, target)
            );
            assert_eq!(again.body, message.body, "body changed");

            let replaced = |h: &Header<'_>| {
                h.is("Cid") || h.is("Uid") || h.is("Rid") || (req_id.is_some() && h.is("ReqID"))
            };
            let kept: Vec<&Header<'_>> = message.headers.iter().filter(|h| !replaced(h)).collect();
            let mut own: Vec<(&str, Vec<u8>)> = Vec::new();
            if let Some(req_id) = req_id {
                own.push(("ReqID", req_id.to_vec()));
            }
            own.push(("Cid", CID.to_vec()));
            own.push(("Uid", sender.uid.to_vec()));
            if let Some(rid) = rid {
                own.push(("Rid", rid.to_string().into_bytes()));
            }
            assert_eq!(again.headers.len(), kept.len() + own.len(), "header count");
            let (sent, added) = again.headers.split_at(kept.len());
            for (relayed, original) in sent.iter().zip(&kept) {
                assert_eq!(relayed, *original, "a sender's header changed");
            }
            for (header, (name, value)) in added.iter().zip(&own) {
                assert_eq!((header.name, header.value), (name.as_bytes(), value.as_slice()));
            }
            for name in ["Cid", "Uid", "Rid"] {
                let count = again.headers.iter().filter(|h| h.is(name)).count();
                let expected = own.iter().filter(|(n, _)| *n == name).count();
                assert_eq!(count, expected, "{name} headers in the relayed message");
            }
            // The broker relays only known commands (an unknown word gets `unknown-command`).
            if message.command.is_some() {
                check_no_smuggled_lines(relayed, own.len());
            }
            input = rest;
        }
    }

    /// Splits the relayed head (first line and headers) at every CR and at every LF, as a lax
    /// receiver would, and checks that the only `Cid`, `Uid` and `Rid` lines are the broker's own:
    /// the last `own` lines of the head.
    fn check_no_smuggled_lines(relayed: &[u8], own: usize) {
        let head_end = relayed
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("relayed head ends with CRLFCRLF");
        let head = &relayed[..head_end];
        let lines: Vec<&[u8]> =
            head.split(|&b| b == b'\r' || b == b'\n').filter(|l| !l.is_empty()).collect();
        let senders = &lines[..lines.len() - own];
        for line in senders.iter().skip(1) {
            let Some(colon) = line.iter().position(|&b| b == b':') else { continue };
            let name = trim_blanks(&line[..colon]);
            for reserved in [&b"cid"[..], b"uid", b"rid"] {
                assert!(
                    !name.eq_ignore_ascii_case(reserved),
                    "a lax receiver sees a spoofed line {:?} in {:?}",
                    String::from_utf8_lossy(line),
                    String::from_utf8_lossy(head)
                );
            }
        }
    }

    /// Removes the blanks PROTOCOL.md §3 ignores around a name (space and tab). Other white space
    /// (VT, FF, NBSP) is `tests/it_adversarial.rs`'s business.
    fn trim_blanks(mut name: &[u8]) -> &[u8] {
        while let [b' ' | b'\t', rest @ ..] = name {
            name = rest;
        }
        while let [rest @ .., b' ' | b'\t'] = name {
            name = rest;
        }
        name
    }
}
