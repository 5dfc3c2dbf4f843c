//! SIP on the wire: framing, a header index over the raw bytes, and the
//! few rewrites a proxy makes. Parsing is pure (`parse`, `frame` over
//! `&[u8]`), never allocates per header value, understands compact header
//! names and folded lines, and frames bodies by Content-Length. Rewriting
//! touches only Via, Route, Record-Route, Max-Forwards and headers we add;
//! every other byte is forwarded as received.

use std::ops::Range;

use thiserror::Error;

/// Largest message we accept (UDP datagrams and TCP frames alike).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// Most header lines we index in one message.
pub const MAX_HEADERS: usize = 256;

#[derive(Debug, Error, PartialEq, Eq, Clone)]
pub enum ParseError {
    #[error("message larger than {MAX_MESSAGE} bytes")]
    TooLarge,
    #[error("no end of headers")]
    NoHeaderEnd,
    #[error("bad start line")]
    StartLine,
    #[error("bad header line")]
    HeaderLine,
    #[error("more than {MAX_HEADERS} headers")]
    TooManyHeaders,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("bad {0}")]
    Bad(&'static str),
    #[error("body shorter than Content-Length")]
    ShortBody,
}

/// Request or status line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartLine {
    Request { method: String, uri: String },
    Response { code: u16, reason: String },
}

/// One indexed header: its canonical (full, lowercase) name and where its
/// line and value sit in the raw message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub name: &'static str,
    /// Unknown header names keep their own spelling (lowercased).
    pub other: Option<String>,
    /// The whole line(s) including the final CRLF.
    pub line: Range<usize>,
    /// The value, trimmed, folded lines included.
    pub value: Range<usize>,
}

/// A parsed SIP message borrowing its bytes.
#[derive(Debug, Clone)]
pub struct Message<'a> {
    pub raw: &'a [u8],
    pub start: StartLine,
    pub headers: Vec<Header>,
    pub body: Range<usize>,
}

const COMPACT: &[(u8, &str)] = &[
    (b'v', "via"),
    (b'f', "from"),
    (b't', "to"),
    (b'i', "call-id"),
    (b'm', "contact"),
    (b'l', "content-length"),
    (b'c', "content-type"),
    (b'k', "supported"),
    (b's', "subject"),
    (b'e', "content-encoding"),
    (b'o', "event"),
    (b'r', "refer-to"),
    (b'x', "session-expires"),
    (b'u', "allow-events"),
    (b'a', "accept-contact"),
    (b'b', "referred-by"),
    (b'j', "reject-contact"),
    (b'd', "request-disposition"),
];

const KNOWN: &[&str] = &[
    "via",
    "from",
    "to",
    "call-id",
    "cseq",
    "contact",
    "content-length",
    "content-type",
    "max-forwards",
    "route",
    "record-route",
    "supported",
    "subject",
    "content-encoding",
    "event",
    "refer-to",
    "session-expires",
    "allow-events",
    "accept-contact",
    "referred-by",
    "reject-contact",
    "request-disposition",
    "require",
    "proxy-require",
];

fn canonical(name: &[u8]) -> (&'static str, Option<String>) {
    if name.len() == 1 {
        let c = name[0].to_ascii_lowercase();
        if let Some((_, full)) = COMPACT.iter().find(|(k, _)| *k == c) {
            return (full, None);
        }
    }
    let lower = String::from_utf8_lossy(name).to_ascii_lowercase();
    match KNOWN.iter().find(|k| **k == lower) {
        Some(k) => (k, None),
        None => ("", Some(lower)),
    }
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn trim(raw: &[u8], mut r: Range<usize>) -> Range<usize> {
    while r.start < r.end && matches!(raw[r.start], b' ' | b'\t' | b'\r' | b'\n') {
        r.start += 1;
    }
    while r.end > r.start && matches!(raw[r.end - 1], b' ' | b'\t' | b'\r' | b'\n') {
        r.end -= 1;
    }
    r
}

/// For a TCP stream: the length of the first complete message in `buf`,
/// `Ok(None)` when more bytes are needed.
pub fn frame(buf: &[u8]) -> Result<Option<usize>, ParseError> {
    let Some(end) = find(buf, b"\r\n\r\n") else {
        return if buf.len() > MAX_MESSAGE {
            Err(ParseError::TooLarge)
        } else {
            Ok(None)
        };
    };
    let total = message_len(buf, end + 4)?;
    Ok((buf.len() >= total).then_some(total))
}

/// The whole length of a TCP message whose head is `buf[..head_end]`.
fn message_len(buf: &[u8], head_end: usize) -> Result<usize, ParseError> {
    let head = parse_head(&buf[..head_end])?;
    let len = head
        .content_length
        .ok_or(ParseError::Missing("Content-Length (required on TCP)"))?;
    let total = head_end + len;
    if total > MAX_MESSAGE {
        return Err(ParseError::TooLarge);
    }
    Ok(total)
}

/// Frames a TCP stream by Content-Length in time linear in the bytes read:
/// the search for the end of a head resumes where the last one stopped,
/// each head is parsed once, and keep-alive CRLFs between messages
/// (RFC 5626) are skipped.
#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
    /// First byte of the message being framed.
    start: usize,
    /// Bytes of it already searched for the end of its head.
    scanned: usize,
    /// Its whole length, once its head is known.
    total: Option<usize>,
    /// Bytes searched for heads' ends so far (the linearity test's count).
    #[cfg(test)]
    searched: usize,
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes of the message not framed yet.
    pub fn buffered(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// The next whole message, `Ok(None)` when more bytes are needed.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, ParseError> {
        if self.total.is_none() && self.scanned == 0 {
            while self
                .buf
                .get(self.start)
                .is_some_and(|b| matches!(b, b'\r' | b'\n'))
            {
                self.start += 1;
            }
        }
        let cur = &self.buf[self.start..];
        let total = match self.total {
            Some(t) => t,
            None => {
                let from = self.scanned.saturating_sub(3);
                #[cfg(test)]
                {
                    self.searched += cur.len() - from;
                }
                let Some(i) = find(&cur[from..], b"\r\n\r\n") else {
                    if cur.len() > MAX_MESSAGE {
                        return Err(ParseError::TooLarge);
                    }
                    self.scanned = cur.len();
                    return Ok(None);
                };
                let t = message_len(cur, from + i + 4)?;
                self.total = Some(t);
                t
            }
        };
        if cur.len() < total {
            return Ok(None);
        }
        let msg = cur[..total].to_vec();
        self.start += total;
        self.total = None;
        self.scanned = 0;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start >= MAX_MESSAGE {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        Ok(Some(msg))
    }
}

/// Parses one complete message (a UDP datagram or a TCP frame).
pub fn parse(raw: &[u8]) -> Result<Message<'_>, ParseError> {
    if raw.len() > MAX_MESSAGE {
        return Err(ParseError::TooLarge);
    }
    let end = find(raw, b"\r\n\r\n").ok_or(ParseError::NoHeaderEnd)?;
    let head = parse_head(&raw[..end + 4])?;
    let body_start = end + 4;
    let body = match head.content_length {
        Some(len) => {
            if raw.len() < body_start + len {
                return Err(ParseError::ShortBody);
            }
            body_start..body_start + len
        }
        None => body_start..raw.len(),
    };
    let msg = Message {
        raw,
        start: head.start,
        headers: head.headers,
        body,
    };
    msg.check()?;
    Ok(msg)
}

struct Head {
    start: StartLine,
    headers: Vec<Header>,
    content_length: Option<usize>,
}

fn parse_head(raw: &[u8]) -> Result<Head, ParseError> {
    let first_end = find(raw, b"\r\n").ok_or(ParseError::StartLine)?;
    let start = parse_start(&raw[..first_end])?;
    let mut headers: Vec<Header> = Vec::with_capacity(16);
    let mut pos = first_end + 2;
    let mut cl: Option<usize> = None;
    while pos < raw.len() {
        let line_end = pos + find(&raw[pos..], b"\r\n").ok_or(ParseError::HeaderLine)?;
        if line_end == pos {
            break; // blank line: end of headers
        }
        if matches!(raw[pos], b' ' | b'\t') {
            // Folded continuation of the previous header.
            let last = headers.last_mut().ok_or(ParseError::HeaderLine)?;
            last.line.end = line_end + 2;
            last.value = trim(raw, last.value.start..line_end);
            pos = line_end + 2;
            continue;
        }
        let colon = raw[pos..line_end]
            .iter()
            .position(|b| *b == b':')
            .ok_or(ParseError::HeaderLine)?
            + pos;
        let name_r = trim(raw, pos..colon);
        if name_r.is_empty() || !raw[name_r.clone()].iter().all(|b| is_token(*b)) {
            return Err(ParseError::HeaderLine);
        }
        let (name, other) = canonical(&raw[name_r]);
        if headers.len() >= MAX_HEADERS {
            return Err(ParseError::TooManyHeaders);
        }
        headers.push(Header {
            name,
            other,
            line: pos..line_end + 2,
            value: trim(raw, colon + 1..line_end),
        });
        pos = line_end + 2;
    }
    for h in headers.iter().filter(|h| h.name == "content-length") {
        let v = std::str::from_utf8(&raw[h.value.clone()])
            .map_err(|_| ParseError::Bad("content-length"))?;
        let n: usize = v.parse().map_err(|_| ParseError::Bad("content-length"))?;
        if cl.is_some_and(|c| c != n) {
            return Err(ParseError::Bad("content-length (conflicting values)"));
        }
        cl = Some(n);
    }
    Ok(Head {
        start,
        headers,
        content_length: cl,
    })
}

fn parse_start(line: &[u8]) -> Result<StartLine, ParseError> {
    let s = std::str::from_utf8(line).map_err(|_| ParseError::StartLine)?;
    if let Some(rest) = s.strip_prefix("SIP/2.0 ") {
        let (code, reason) = rest.split_once(' ').unwrap_or((rest, ""));
        if code.len() != 3 {
            return Err(ParseError::StartLine);
        }
        let code: u16 = code.parse().map_err(|_| ParseError::StartLine)?;
        if !(100..=699).contains(&code) {
            return Err(ParseError::StartLine);
        }
        return Ok(StartLine::Response {
            code,
            reason: reason.to_string(),
        });
    }
    let mut parts = s.split(' ');
    let (Some(method), Some(uri), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::StartLine);
    };
    if version != "SIP/2.0" || method.is_empty() || !method.bytes().all(is_token) || uri.is_empty()
    {
        return Err(ParseError::StartLine);
    }
    if !uri.contains(':') || uri.starts_with('<') {
        return Err(ParseError::StartLine);
    }
    Ok(StartLine::Request {
        method: method.to_string(),
        uri: uri.to_string(),
    })
}

impl<'a> Message<'a> {
    /// RFC 3261 §8.1.1 mandatory headers and CSeq consistency.
    fn check(&self) -> Result<(), ParseError> {
        for (name, label) in [
            ("via", "Via"),
            ("from", "From"),
            ("to", "To"),
            ("call-id", "Call-ID"),
            ("cseq", "CSeq"),
        ] {
            if self.header(name).is_none() {
                return Err(ParseError::Missing(label));
            }
        }
        for name in [
            "from",
            "to",
            "call-id",
            "cseq",
            "max-forwards",
            "content-length",
        ] {
            if self.headers.iter().filter(|h| h.name == name).count() > 1 {
                return Err(ParseError::Bad("duplicate single-value header"));
            }
        }
        let (_, cseq_method) = self.cseq().ok_or(ParseError::Bad("CSeq"))?;
        if let StartLine::Request { method, .. } = &self.start {
            if *method != cseq_method {
                return Err(ParseError::Bad(
                    "CSeq method differs from the request method",
                ));
            }
        }
        if let Some(mf) = self.header("max-forwards") {
            mf.parse::<u32>()
                .map_err(|_| ParseError::Bad("Max-Forwards"))?;
        }
        for h in self.headers.iter().filter(|h| h.name == "via") {
            if !split_list(self.value(h)).all(via_valid) {
                return Err(ParseError::Bad("Via"));
            }
        }
        for (name, label) in [("from", "From"), ("to", "To")] {
            if !self.header(name).is_some_and(name_addr_valid) {
                return Err(ParseError::Bad(label));
            }
        }
        if let StartLine::Request { uri, .. } = &self.start {
            // RFC 3261 §19.1.1: a Request-URI carries no headers.
            let host_part = uri.rsplit_once('@').map_or(uri.as_str(), |(_, h)| h);
            if (uri.starts_with("sip:") || uri.starts_with("sips:")) && host_part.contains('?') {
                return Err(ParseError::Bad("Request-URI (headers not allowed)"));
            }
        }
        Ok(())
    }

    pub fn value(&self, h: &Header) -> &'a str {
        std::str::from_utf8(&self.raw[h.value.clone()]).unwrap_or("")
    }

    /// The first header of that name (lowercase; compact forms of known
    /// headers are found by their full name).
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers
            .iter()
            .find(|h| h.name == name || h.other.as_deref() == Some(name))
            .map(|h| self.value(h))
    }

    pub fn method(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { method, .. } => Some(method),
            StartLine::Response { .. } => None,
        }
    }

    pub fn uri(&self) -> Option<&str> {
        match &self.start {
            StartLine::Request { uri, .. } => Some(uri),
            StartLine::Response { .. } => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match &self.start {
            StartLine::Response { code, .. } => Some(*code),
            StartLine::Request { .. } => None,
        }
    }

    pub fn reason(&self) -> &str {
        match &self.start {
            StartLine::Response { reason, .. } => reason,
            StartLine::Request { .. } => "",
        }
    }

    pub fn call_id(&self) -> &'a str {
        self.header("call-id").unwrap_or("")
    }

    pub fn cseq(&self) -> Option<(u32, String)> {
        let v = self.header("cseq")?;
        let mut it = v.split_whitespace();
        let n = it.next()?.parse().ok()?;
        let m = it.next()?.to_string();
        it.next().is_none().then_some((n, m))
    }

    /// Max-Forwards, 70 when absent.
    pub fn max_forwards(&self) -> u32 {
        self.header("max-forwards")
            .and_then(|v| v.parse().ok())
            .unwrap_or(70)
    }

    /// The first (topmost) Via value.
    pub fn top_via(&self) -> Option<&'a str> {
        let v = self.header("via")?;
        Some(split_list(v).next().unwrap_or(v).trim())
    }

    /// The `branch` parameter of the top Via.
    pub fn branch(&self) -> Option<&'a str> {
        param(self.top_via()?, "branch")
    }

    pub fn from_tag(&self) -> Option<&'a str> {
        param(self.header("from")?, "tag")
    }

    pub fn to_tag(&self) -> Option<&'a str> {
        param(self.header("to")?, "tag")
    }

    pub fn body(&self) -> &'a [u8] {
        &self.raw[self.body.clone()]
    }
}

/// One Via value: `SIP/2.0/transport sent-by *(;param)`, LWS allowed
/// around the slashes, no empty parameters.
fn via_valid(v: &str) -> bool {
    let v = v.trim();
    let mut parts = v.splitn(2, ';');
    let head = parts.next().unwrap_or("");
    // Collapse LWS around '/' in the protocol part.
    let compact: String = head.split('/').map(str::trim).collect::<Vec<_>>().join("/");
    let mut it = compact.splitn(2, char::is_whitespace);
    let proto = it.next().unwrap_or("");
    let host = it.next().unwrap_or("").trim();
    let p: Vec<&str> = proto.split('/').collect();
    if p.len() != 3
        || !p[0].eq_ignore_ascii_case("SIP")
        || p[1] != "2.0"
        || p[2].is_empty()
        || !p[2].bytes().all(is_token)
    {
        return false;
    }
    if host.is_empty() || host.contains(char::is_whitespace) && !host.contains(':') {
        return false;
    }
    match parts.next() {
        None => true,
        Some(params) => params.split(';').all(|p| {
            let name = p.split('=').next().unwrap_or("").trim();
            !name.is_empty() && name.bytes().all(is_token)
        }),
    }
}

/// From/To: balanced quoted display name, and an addr-spec inside `<>`
/// without surrounding whitespace.
fn name_addr_valid(v: &str) -> bool {
    let b = v.as_bytes();
    let (mut i, mut quoted) = (0, false);
    let mut lt = None;
    while i < b.len() {
        match b[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            b'<' if !quoted && lt.is_none() => lt = Some(i),
            _ => {}
        }
        i += 1;
    }
    if quoted {
        return false;
    }
    match lt {
        None => !v.trim().is_empty(),
        Some(start) => match v[start..].find('>') {
            None => false,
            Some(len) => {
                let inner = &v[start + 1..start + len];
                !inner.is_empty() && inner.trim() == inner
            }
        },
    }
}

/// Splits a header value on commas that are outside quotes and `<>`.
pub fn split_list(v: &str) -> impl Iterator<Item = &str> {
    let mut parts = Vec::new();
    let (mut depth, mut quoted, mut start) = (0i32, false, 0);
    let bytes = v.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'"' => quoted = !quoted,
            b'<' if !quoted => depth += 1,
            b'>' if !quoted => depth -= 1,
            b',' if !quoted && depth == 0 => {
                parts.push(&v[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&v[start..]);
    parts.into_iter()
}

/// A `;name=value` parameter of a header value (outside `<>`).
pub fn param<'v>(v: &'v str, name: &str) -> Option<&'v str> {
    let after = match v.rfind('>') {
        Some(i) => &v[i + 1..],
        None => v,
    };
    after.split(';').skip(1).find_map(|p| {
        let (k, val) = p.split_once('=').unwrap_or((p, ""));
        k.trim().eq_ignore_ascii_case(name).then(|| val.trim())
    })
}

/// The user part of a SIP/tel URI (`sip:+7495...@host` → `+7495...`).
pub fn uri_user(uri: &str) -> Option<&str> {
    let uri = uri.trim().trim_start_matches('<');
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))
        .or_else(|| uri.strip_prefix("tel:"))?;
    if uri.starts_with("tel:") {
        return Some(rest.split(';').next().unwrap_or(rest));
    }
    let at = rest.find('@')?;
    let user = &rest[..at];
    Some(user.split(';').next().unwrap_or(user))
}

/// The `host:port` of a SIP URI (`sip:u@127.0.0.1:5070;lr` → `127.0.0.1:5070`).
pub fn uri_hostport(uri: &str) -> Option<&str> {
    let uri = uri.trim().trim_start_matches('<');
    let uri = uri.split('>').next().unwrap_or(uri);
    let rest = uri
        .strip_prefix("sip:")
        .or_else(|| uri.strip_prefix("sips:"))?;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    Some(rest.split([';', '?']).next().unwrap_or(rest))
}

/// Builds a copy of a request for forwarding: new request line, our Via on
/// top, optional Record-Route, Max-Forwards set, the leading Route entries
/// that name us dropped (one, or two after a double Record-Route), `add`
/// headers appended (replacing same-named ones), and everything else
/// byte-exact.
pub struct Forward<'m, 'a> {
    pub msg: &'m Message<'a>,
    pub uri: Option<&'m str>,
    pub via: &'m str,
    /// The sender's (topmost received) Via rewritten with `received` /
    /// `rport` ([`stamp_via`]); `None` keeps it byte-exact.
    pub sender_via: Option<&'m str>,
    pub record_route: Option<&'m str>,
    /// Our own `host:port`s: leading Route entries naming one are dropped.
    pub own: &'m [&'m str],
    pub max_forwards: u32,
    pub add: &'m [(&'m str, String)],
}

impl Forward<'_, '_> {
    pub fn build(&self) -> Vec<u8> {
        let m = self.msg;
        let mut out = Vec::with_capacity(m.raw.len() + 256);
        let (method, uri) = match &m.start {
            StartLine::Request { method, uri } => (method.as_str(), self.uri.unwrap_or(uri)),
            StartLine::Response { .. } => unreachable!("Forward builds requests"),
        };
        out.extend_from_slice(
            format!("{method} {uri} SIP/2.0\r\nVia: {}\r\n", self.via).as_bytes(),
        );
        if let Some(rr) = self.record_route {
            out.extend_from_slice(format!("Record-Route: {rr}\r\n").as_bytes());
        }
        out.extend_from_slice(format!("Max-Forwards: {}\r\n", self.max_forwards).as_bytes());
        // Only the leading entries of the first Route header can be ours.
        let mut route_seen = false;
        let mut sender_via = self.sender_via;
        for h in &m.headers {
            if h.name == "max-forwards" {
                continue;
            }
            if let (true, Some(top)) = (h.name == "via", sender_via.take()) {
                let rest: Vec<&str> = split_list(m.value(h)).skip(1).collect();
                let mut line = format!("Via: {top}");
                if !rest.is_empty() {
                    line.push(',');
                    line.push_str(&rest.join(","));
                }
                line.push_str("\r\n");
                out.extend_from_slice(line.as_bytes());
                continue;
            }
            if let Some(other) = &h.other {
                if self.add.iter().any(|(n, _)| n.eq_ignore_ascii_case(other)) {
                    continue;
                }
            }
            if h.name == "route" && !route_seen {
                route_seen = true;
                let items: Vec<&str> = split_list(m.value(h))
                    .skip_while(|r| uri_hostport(r).is_some_and(|hp| self.own.contains(&hp)))
                    .collect();
                if !items.is_empty() {
                    out.extend_from_slice(
                        format!("Route: {}\r\n", items.join(",").trim()).as_bytes(),
                    );
                }
                continue;
            }
            out.extend_from_slice(&m.raw[h.line.clone()]);
        }
        for (n, v) in self.add {
            out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
        }
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(m.body());
        out
    }
}

/// The topmost Via of a request received from `from`, stamped per RFC
/// 3261 §18.2.1 and RFC 3581: `received` when the sent-by host is not the
/// source address (or the sender asked for `rport`), and a bare `rport`
/// filled in with the source port. `None` when nothing changes.
pub fn stamp_via(top_via: &str, from: std::net::SocketAddr) -> Option<String> {
    let mut parts = top_via.split(';');
    let head = parts.next().unwrap_or("").trim_end();
    let params: Vec<&str> = parts.collect();
    let sent_by = head.split_whitespace().last().unwrap_or("");
    let host = match sent_by.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => sent_by.rsplit_once(':').map_or(sent_by, |(h, _)| h),
    };
    let wants_rport = params
        .iter()
        .any(|p| p.trim().eq_ignore_ascii_case("rport"));
    let has_received = params.iter().any(|p| {
        p.split('=')
            .next()
            .unwrap_or("")
            .trim()
            .eq_ignore_ascii_case("received")
    });
    let add_received =
        !has_received && (wants_rport || host.parse::<std::net::IpAddr>().ok() != Some(from.ip()));
    if !add_received && !wants_rport {
        return None;
    }
    let mut out = head.to_string();
    for p in params {
        if p.trim().eq_ignore_ascii_case("rport") {
            out.push_str(&format!(";rport={}", from.port()));
        } else {
            out.push(';');
            out.push_str(p);
        }
    }
    if add_received {
        out.push_str(&format!(";received={}", from.ip()));
    }
    Some(out)
}

/// Where a response goes by its (new) topmost Via: `received` or the
/// sent-by host, `rport` or the sent-by port (5060 by default), and
/// whether the transport is TCP.
pub fn via_destination(via: &str) -> Option<(std::net::SocketAddr, bool)> {
    let head = via.split(';').next()?;
    let mut parts = head.split_whitespace();
    let proto = parts.next()?;
    let sent_by = parts.next()?;
    let tcp = proto.to_ascii_uppercase().ends_with("/TCP");
    let (host, port) = match sent_by.strip_prefix('[') {
        Some(v6) => {
            let (h, rest) = v6.split_once(']')?;
            (h, rest.strip_prefix(':').and_then(|p| p.parse().ok()))
        }
        None => match sent_by.rsplit_once(':') {
            Some((h, p)) => (h, p.parse().ok()),
            None => (sent_by, None),
        },
    };
    let host = param(via, "received").unwrap_or(host);
    let port = param(via, "rport")
        .and_then(|p| p.parse().ok())
        .or(port)
        .unwrap_or(5060);
    let ip: std::net::IpAddr = host.parse().ok()?;
    Some((std::net::SocketAddr::new(ip, port), tcp))
}

/// The standard reason phrase of a status code we send ourselves.
pub fn reason_phrase(code: u16) -> &'static str {
    match code {
        100 => "Trying",
        200 => "OK",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        480 => "Temporarily Unavailable",
        481 => "Call/Transaction Does Not Exist",
        482 => "Loop Detected",
        483 => "Too Many Hops",
        486 => "Busy Here",
        487 => "Request Terminated",
        500 => "Server Internal Error",
        503 => "Service Unavailable",
        513 => "Message Too Large",
        600 => "Busy Everywhere",
        603 => "Decline",
        _ => "Unknown",
    }
}

/// A response for forwarding upstream: our (top) Via removed, the rest
/// byte-exact.
pub fn strip_top_via(m: &Message<'_>) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.raw.len());
    let first_header = m.headers.first().map_or(m.body.start, |h| h.line.start);
    out.extend_from_slice(&m.raw[..first_header]);
    let mut done = false;
    for h in &m.headers {
        if h.name == "via" && !done {
            done = true;
            let v = m.value(h);
            let rest: Vec<&str> = split_list(v).skip(1).collect();
            if !rest.is_empty() {
                out.extend_from_slice(format!("Via: {}\r\n", rest.join(",").trim()).as_bytes());
            }
            continue;
        }
        out.extend_from_slice(&m.raw[h.line.clone()]);
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(m.body());
    out
}

/// A response generated by us to a request (RFC 3261 §8.2.6): Via, From,
/// To (with our tag added to a final response lacking one), Call-ID and
/// CSeq copied.
pub fn response(
    req: &Message<'_>,
    code: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &[(&str, String)],
) -> Vec<u8> {
    let mut out = format!("SIP/2.0 {code} {reason}\r\n").into_bytes();
    for h in &req.headers {
        match h.name {
            "via" | "from" | "call-id" | "cseq" => out.extend_from_slice(&req.raw[h.line.clone()]),
            "to" => {
                let v = req.value(h);
                match to_tag {
                    Some(tag) if code > 100 && param(v, "tag").is_none() => {
                        out.extend_from_slice(format!("To: {v};tag={tag}\r\n").as_bytes())
                    }
                    _ => out.extend_from_slice(&req.raw[h.line.clone()]),
                }
            }
            _ => {}
        }
    }
    for (n, v) in extra {
        out.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    out.extend_from_slice(b"Server: dialmark\r\nContent-Length: 0\r\n\r\n");
    out
}

/// The error reply to a request we could not parse (RFC 3261 §16.3 / §21):
/// 513 when it is too large, else 400 with the cause in the reason phrase,
/// built from the raw Via, From, To, Call-ID and CSeq lines. `None` when
/// there is nobody to answer: not a request, an ACK, or those headers are
/// missing (the message is then dropped).
pub fn error_reply(raw: &[u8], err: &ParseError) -> Option<Vec<u8>> {
    let raw = &raw[..raw.len().min(MAX_MESSAGE)];
    let head = &raw[..find(raw, b"\r\n\r\n").unwrap_or(raw.len())];
    let mut lines = head
        .split(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let start = std::str::from_utf8(lines.next()?).ok()?;
    let method = start.split(' ').next()?;
    if method.is_empty()
        || method == "ACK"
        || !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b))
        || start.split(' ').count() < 3
        || !start.ends_with(" SIP/2.0")
    {
        return None;
    }
    let (mut via, mut from, mut to, mut call_id, mut cseq) = (Vec::new(), None, None, None, None);
    // Every line: a header flood is refused too (the head is within MAX_MESSAGE).
    for line in lines {
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if line.len() > 1024 || value.contains(['\r', '\0']) {
            continue;
        }
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => via.push(value),
            "from" | "f" => from = from.or(Some(value)),
            "to" | "t" => to = to.or(Some(value)),
            "call-id" | "i" => call_id = call_id.or(Some(value)),
            "cseq" => cseq = cseq.or(Some(value)),
            _ => {}
        }
    }
    let (from, to, call_id, cseq) = (from?, to?, call_id?, cseq?);
    if via.is_empty() {
        return None;
    }
    let (code, reason) = match err {
        ParseError::TooLarge => (513, "Message Too Large".to_string()),
        e => (400, format!("Bad Request ({e})")),
    };
    let mut out = format!("SIP/2.0 {code} {reason}\r\n");
    for v in via {
        out.push_str(&format!("Via: {v}\r\n"));
    }
    let tag = if param(to, "tag").is_none() {
        ";tag=dm-bad-request"
    } else {
        ""
    };
    out.push_str(&format!(
        "From: {from}\r\nTo: {to}{tag}\r\nCall-ID: {call_id}\r\nCSeq: {cseq}\r\nServer: dialmark\r\nContent-Length: 0\r\n\r\n"
    ));
    Some(out.into_bytes())
}

/// Any bytes through what the node does with a datagram or a TCP stream:
/// framing (whole and in two chunks), parsing, the header accessors, the
/// Via stamping, and the error reply. Panics if any of them does, or if a
/// reply is not itself valid SIP (but for the headers it copies from the
/// request). The fuzz target (`sip-router/fuzz`) and the unit tests share it.
#[doc(hidden)]
pub fn exercise(data: &[u8]) {
    let _ = frame(data);
    // A TCP stream arriving in two reads frames like one read would.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut framer = Framer::default();
    framer.push(&data[..cut]);
    let mut seen = 0usize;
    while let Ok(Some(m)) = framer.next_message() {
        seen += m.len();
    }
    framer.push(&data[cut..]);
    while let Ok(Some(m)) = framer.next_message() {
        seen += m.len();
    }
    assert!(seen <= data.len(), "framed more than was read");
    match parse(data) {
        Ok(m) => {
            let _ = (
                m.method(),
                m.uri(),
                m.branch(),
                m.cseq(),
                m.to_tag(),
                m.top_via(),
            );
            if let Some(v) = m.top_via() {
                let _ = stamp_via(v, "192.0.2.1:5060".parse().unwrap());
                let _ = via_destination(v);
            }
        }
        Err(e) => {
            if let Some(reply) = error_reply(data, &e) {
                assert_eq!(
                    frame(&reply).ok().flatten(),
                    Some(reply.len()),
                    "the error reply is one whole message"
                );
                match parse(&reply) {
                    Ok(_) => {}
                    // Via, From, To and CSeq are copied from the request
                    // (RFC 3261 §8.2.6.2): they may be as malformed as its own.
                    Err(ParseError::Bad("Via" | "From" | "To" | "CSeq")) => {}
                    Err(e) => panic!("the error reply does not parse: {e}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
