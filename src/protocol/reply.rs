//! Messages the broker writes itself. STUB: being written (interface fixed).

/// The error codes of PROTOCOL.md §6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    NotTrusted,
    NoResponder,
    ResponderLost,
    Timeout,
    NoRequest,
    NoConnection,
    UnknownCommand,
    Malformed,
    Limit,
}

impl ErrorCode {
    /// The value of the `Code` header.
    pub fn as_str(self) -> &'static str {
        todo!()
    }
}

/// Appends `PUB ERROR` with `Code: <code>`, `ReqID: <req_id>` when set, and a body of one
/// line, `text` (dot-stuffed if it starts with `.`), CRLF, then `.` CRLF.
pub fn write_error(code: ErrorCode, req_id: Option<&[u8]>, text: &[u8], out: &mut Vec<u8>) {
    let _ = (code, req_id, text, out);
    todo!()
}

/// Appends the text of the standard error for `code` about `command` and `target`, as the
/// original wrote it: `Not trusted PUB T`, `Not trusted: SUB T`, `No responder for REQ T`,
/// `No client for request ID  RES T` ... (see PROTOCOL.md §6).
pub fn write_error_text(code: ErrorCode, command: &[u8], target: &[u8], out: &mut Vec<u8>) {
    let _ = (code, command, target, out);
    todo!()
}
