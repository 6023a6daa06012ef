//! HTTP/1.1 framing for the API socket: an incremental request parser with size caps and the
//! response writer. Only what an API client sends is accepted: a request line, headers, and a
//! body framed by `Content-Length` (no chunked encoding).

use std::fmt::Write as _;

/// Request line plus headers may not exceed this.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// Request bodies may not exceed this (Firecracker's limit is 50 KiB too).
pub const MAX_BODY_BYTES: usize = 50 * 1024;
const MAX_HEADERS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
    Patch,
}

/// One complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub path: String,
    pub body: Vec<u8>,
}

/// What [`parse_request`] made of the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// More bytes are needed.
    Incomplete,
    /// A request, and how many bytes of the buffer it took.
    Complete(Request, usize),
    /// The stream cannot be read as requests any more: answer with this and close.
    Invalid(Response),
    /// A well-framed request that cannot be served (e.g. an unknown method): answer and go on.
    Refused(Response, usize),
}

/// Parses the first request of `buf`, if it is all there.
pub fn parse_request(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD_BYTES => {
            return Parsed::Invalid(Response::error(
                431,
                format!("the request head is larger than {MAX_HEAD_BYTES} bytes"),
            ))
        }
        Ok(httparse::Status::Partial) => return Parsed::Incomplete,
        Err(e) => {
            return Parsed::Invalid(Response::error(400, format!("malformed HTTP request: {e}")))
        }
    };
    if head_len > MAX_HEAD_BYTES {
        return Parsed::Invalid(Response::error(
            431,
            format!("the request head is larger than {MAX_HEAD_BYTES} bytes"),
        ));
    }
    let mut body_len = 0usize;
    for header in request.headers.iter() {
        if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Parsed::Invalid(Response::error(
                501,
                "Transfer-Encoding is not supported; send a Content-Length",
            ));
        }
        if header.name.eq_ignore_ascii_case("content-length") {
            let text = std::str::from_utf8(header.value).unwrap_or("");
            match text.trim().parse::<usize>() {
                Ok(len) => body_len = len,
                Err(_) => {
                    return Parsed::Invalid(Response::error(
                        400,
                        format!("invalid Content-Length '{text}'"),
                    ))
                }
            }
        }
    }
    if body_len > MAX_BODY_BYTES {
        return Parsed::Invalid(Response::error(
            413,
            format!("the request body ({body_len} bytes) is larger than {MAX_BODY_BYTES} bytes"),
        ));
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Parsed::Incomplete;
    }
    let path = request.path.unwrap_or("/").to_string();
    let method = match request.method.unwrap_or("") {
        "GET" => Method::Get,
        "PUT" => Method::Put,
        "PATCH" => Method::Patch,
        other => {
            return Parsed::Refused(
                Response::error(405, format!("method {other} is not supported")),
                total,
            )
        }
    };
    let body = buf[head_len..total].to_vec();
    Parsed::Complete(Request { method, path, body }, total)
}

/// A response: status and an optional JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub body: Option<String>,
}

impl Response {
    /// 204 No Content.
    pub fn no_content() -> Self {
        Response {
            status: 204,
            body: None,
        }
    }

    /// 200 with a JSON body.
    pub fn json(value: &serde_json::Value) -> Self {
        Response {
            status: 200,
            body: Some(value.to_string()),
        }
    }

    /// An error with Firecracker's `{"fault_message": ...}` body.
    pub fn error(status: u16, message: impl Into<String>) -> Self {
        let body = serde_json::json!({ "fault_message": message.into() });
        Response {
            status,
            body: Some(body.to_string()),
        }
    }

    /// The fault message of an error response, if any (for logs and tests).
    pub fn fault_message(&self) -> Option<String> {
        let value: serde_json::Value = serde_json::from_str(self.body.as_deref()?).ok()?;
        value.get("fault_message")?.as_str().map(str::to_string)
    }

    /// The bytes on the wire.
    pub fn encode(&self, close: bool) -> Vec<u8> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        let body = self.body.as_deref().unwrap_or("");
        if self.body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if self.status != 204 {
            let _ = write!(head, "Content-Length: {}\r\n", body.len());
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        413 => "Payload Too Large",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_arriving_in_pieces_completes_once_the_body_is_there() {
        let wire = b"PUT /machine-config HTTP/1.1\r\nHost: x\r\nContent-Length: 16\r\n\r\n{\"vcpu_count\":2}GET";
        for cut in 0..wire.len() - 3 {
            assert_eq!(parse_request(&wire[..cut]), Parsed::Incomplete, "cut {cut}");
        }
        match parse_request(wire) {
            Parsed::Complete(request, used) => {
                assert_eq!(request.method, Method::Put);
                assert_eq!(request.path, "/machine-config");
                assert_eq!(request.body, b"{\"vcpu_count\":2}");
                assert_eq!(used, wire.len() - 3);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn garbage_oversized_and_chunked_requests_are_refused() {
        let status = |wire: &[u8]| match parse_request(wire) {
            Parsed::Invalid(r) => r.status,
            Parsed::Refused(r, _) => r.status,
            other => panic!("{other:?}"),
        };
        assert_eq!(status(b"\x00\x01\x02 garbage\r\n\r\n"), 400);
        assert_eq!(status(&vec![b'A'; MAX_HEAD_BYTES + 10]), 431);
        let mut long_head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        long_head.extend(vec![b'a'; MAX_HEAD_BYTES]);
        assert_eq!(status(&long_head), 431);
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nContent-Length: 999999\r\n\r\n"),
            413
        );
        assert_eq!(status(b"PUT / HTTP/1.1\r\nContent-Length: x\r\n\r\n"), 400);
        assert_eq!(
            status(b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            501
        );
        assert_eq!(status(b"DELETE / HTTP/1.1\r\n\r\n"), 405);
    }

    #[test]
    fn responses_carry_length_and_fault_message() {
        let wire = Response::error(400, "bad \"thing\"").encode(false);
        let text = String::from_utf8(wire).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{text}");
        assert!(
            text.ends_with("{\"fault_message\":\"bad \\\"thing\\\"\"}"),
            "{text}"
        );
        let no_content = String::from_utf8(Response::no_content().encode(true)).unwrap();
        assert_eq!(
            no_content,
            "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n"
        );
    }
}
