//! The middleman message, sans-IO. STUB: being written (interface fixed).

use smallvec::SmallVec;

/// The commands of PROTOCOL.md §4.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    Sub,
    Uns,
    Pub,
    Req,
    Res,
    Epub,
    Esub,
    Ereq,
    Int,
}

impl Command {
    /// Matches the command word exactly (upper case); `None` for an unknown word.
    pub fn parse(word: &[u8]) -> Option<Self> {
        let _ = word;
        todo!()
    }

    pub fn as_str(self) -> &'static str {
        todo!()
    }
}

/// Limits the parser enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub topic_bytes_max: usize,
    pub headers_max: usize,
}

/// One header line as the sender wrote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header<'a> {
    /// The whole line without its EOL, relayed as is.
    pub line: &'a [u8],
    /// The name, whitespace-trimmed; compare with [`Header::is`].
    pub name: &'a [u8],
    /// The value, leading and trailing whitespace removed.
    pub value: &'a [u8],
}

impl Header<'_> {
    /// Case-insensitive name match.
    pub fn is(&self, name: &str) -> bool {
        self.name.eq_ignore_ascii_case(name.as_bytes())
    }
}

/// A parsed message, borrowing from the WebSocket payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message<'a> {
    /// The command word as sent (for `Unknown command <CMD> T`).
    pub word: &'a [u8],
    /// `None` when the word is not a known command.
    pub command: Option<Command>,
    pub target: &'a [u8],
    pub headers: SmallVec<[Header<'a>; 8]>,
    /// The body exactly as encoded by the sender: from after the blank line up to (not
    /// including) the terminating `.` line. Still dot-stuffed; ends with the EOL of its last
    /// line (or is empty).
    pub body: &'a [u8],
}

impl<'a> Message<'a> {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers.iter().find(|h| h.is(name)).map(|h| h.value)
    }
}

/// Why a message could not be parsed; the text follows `Malformed message: `.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Malformed {
    Empty,
    NoSpace,
    EmptyTarget,
    TargetTooLong,
    BadTargetByte,
    HeaderNoColon,
    EmptyHeaderName,
    TooManyHeaders,
    NoBlankLine,
    NoTerminator,
}

impl Malformed {
    pub fn text(self) -> &'static str {
        todo!()
    }
}

/// Parses the next message from `input` (a WebSocket payload or what is left of it).
///
/// Returns `None` when `input` holds nothing but blank lines (the end of the payload),
/// `Some(Ok((message, rest)))`, or `Some(Err(_))`, after which the rest of the payload is
/// skipped.
pub fn next(input: &[u8], limits: Limits) -> Option<Result<(Message<'_>, &[u8]), Malformed>> {
    let _ = (input, limits);
    todo!()
}

/// Who sent a relayed message: the values of the `Cid` and `Uid` headers the broker adds.
#[derive(Clone, Copy, Debug)]
pub struct Sender<'a> {
    pub cid: &'a [u8],
    pub uid: &'a [u8],
}

/// Appends the relayed form of `message`: `CMD target`, the sender's headers minus any
/// `Cid`/`Uid`/`Rid` (and minus `ReqID` when `req_id` is set), then `ReqID: <req_id>` when
/// set, `Cid`, `Uid`, `Rid: <rid>` when set, the blank line, the body as sent, and `.` CRLF.
pub fn write_relay(
    message: &Message<'_>,
    sender: Sender<'_>,
    req_id: Option<&[u8]>,
    rid: Option<u64>,
    out: &mut Vec<u8>,
) {
    let _ = (message, sender, req_id, rid, out);
    todo!()
}
