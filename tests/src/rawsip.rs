//! A scripted SIP peer on a plain UDP socket, for what SIPp cannot stage
//! exactly: a trunk that wakes up late, a BYE from the carrier's second
//! SBC, a spoofed reply, a carrier that withholds its ACK, an early dialog
//! with PRACK and UPDATE. Messages are read with the router's own wire
//! parser; each `expect` waits for a condition with a deadline and says
//! what it saw instead.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use dialmark_router::wire;

/// One SIP peer (a carrier SBC or a trunk) on 127.0.0.1.
pub struct Peer {
    sock: UdpSocket,
    pub addr: SocketAddr,
}

/// A received message.
#[derive(Debug, Clone)]
pub struct Msg {
    pub text: String,
    pub from: SocketAddr,
    pub at: Instant,
}

impl Msg {
    pub fn parsed(&self) -> wire::Message<'_> {
        wire::parse(self.text.as_bytes()).expect("the router sends valid SIP")
    }

    /// `INVITE`, `BYE`... for requests; `SIP/2.0 200` style for replies.
    pub fn start_line(&self) -> &str {
        self.text.lines().next().unwrap_or("")
    }

    pub fn is_request(&self, method: &str) -> bool {
        self.parsed().method() == Some(method)
    }

    /// A reply with this status to a request of this method.
    pub fn is_reply(&self, code: u16, method: &str) -> bool {
        let m = self.parsed();
        m.status() == Some(code) && m.cseq().is_some_and(|(_, x)| x == method)
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.parsed().header(name).map(str::to_string)
    }

    pub fn branch(&self) -> String {
        self.parsed().branch().unwrap_or("").to_string()
    }

    /// The reply a UA would send to this request.
    pub fn reply(&self, code: u16, to_tag: &str, extra: &[(&str, String)]) -> String {
        let m = self.parsed();
        let tag = (!to_tag.is_empty()).then_some(to_tag);
        String::from_utf8(wire::response(
            &m,
            code,
            wire::reason_phrase(code),
            tag,
            extra,
        ))
        .expect("utf-8")
    }
}

impl Default for Peer {
    fn default() -> Self {
        Self::bind()
    }
}

impl Peer {
    pub fn bind() -> Peer {
        Self::bind_on("127.0.0.1")
    }

    /// A peer on another loopback address (127.0.0.2 is not a trusted
    /// carrier in the tests' configs).
    pub fn bind_on(ip: &str) -> Peer {
        let sock = UdpSocket::bind((ip, 0)).expect("bind udp");
        let addr = sock.local_addr().expect("local addr");
        Peer { sock, addr }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn send(&self, to: SocketAddr, text: &str) {
        // Scripts are written with "\n": SIP wants CRLF.
        let text = if text.contains("\r\n") {
            text.to_string()
        } else {
            text.replace('\n', "\r\n")
        };
        self.sock.send_to(text.as_bytes(), to).expect("send udp");
    }

    /// The next message within `timeout`, if any.
    pub fn recv(&self, timeout: Duration) -> Option<Msg> {
        self.sock
            .set_read_timeout(Some(timeout.max(Duration::from_millis(1))))
            .ok()?;
        let mut buf = vec![0u8; 65_535];
        let (n, from) = self.sock.recv_from(&mut buf).ok()?;
        Some(Msg {
            text: String::from_utf8_lossy(&buf[..n]).into_owned(),
            from,
            at: Instant::now(),
        })
    }

    /// Every message within `window`.
    pub fn drain(&self, window: Duration) -> Vec<Msg> {
        let until = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(m) = self.recv(until.saturating_duration_since(Instant::now())) {
            out.push(m);
            if Instant::now() >= until {
                break;
            }
        }
        out
    }

    /// Waits up to `timeout` for a message `want` accepts; the others seen
    /// meanwhile are returned too (in order), for assertions about them.
    pub fn wait(&self, timeout: Duration, want: impl Fn(&Msg) -> bool) -> (Option<Msg>, Vec<Msg>) {
        let until = Instant::now() + timeout;
        let mut others = Vec::new();
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return (None, others);
            }
            match self.recv(left) {
                Some(m) if want(&m) => return (Some(m), others),
                Some(m) => others.push(m),
                None => return (None, others),
            }
        }
    }

    /// Like [`Peer::wait`], failing the test with what was seen instead.
    pub fn expect(&self, timeout: Duration, what: &str, want: impl Fn(&Msg) -> bool) -> Msg {
        let (m, others) = self.wait(timeout, want);
        m.unwrap_or_else(|| {
            let seen: Vec<&str> = others.iter().map(Msg::start_line).collect();
            panic!("{what}: not within {timeout:?}; saw {seen:?}")
        })
    }
}

/// A carrier's INVITE for `number` to the router at `router`.
pub struct Invite<'a> {
    pub number: &'a str,
    pub call_id: &'a str,
    pub branch: &'a str,
    pub from_tag: &'a str,
    pub max_forwards: u32,
    /// Extra header lines (without CRLF).
    pub extra: &'a [&'a str],
}

impl Invite<'_> {
    pub fn text(&self, from: &Peer, router: SocketAddr) -> String {
        let mut extra = String::new();
        for l in self.extra {
            extra.push_str(l);
            extra.push_str("\r\n");
        }
        format!(
            "INVITE sip:{n}@{router} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={b}\r\nMax-Forwards: {mf}\r\n\
             From: <sip:+79161234567@{me}>;tag={ft}\r\nTo: <sip:{n}@{router}>\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n\
             Contact: <sip:caller@{me}>\r\n{extra}Content-Length: 0\r\n\r\n",
            n = self.number,
            me = from.addr,
            b = self.branch,
            mf = self.max_forwards,
            ft = self.from_tag,
            cid = self.call_id,
        )
    }
}

/// A fresh branch.
pub fn branch() -> String {
    format!("z9hG4bK-t-{}", uuid::Uuid::new_v4().simple())
}

/// A request inside a dialog: `method` from `me` to `router` with the
/// given From/To, Call-ID and CSeq, routed through the router (Route).
#[allow(clippy::too_many_arguments)]
pub fn in_dialog(
    method: &str,
    uri: &str,
    me: &Peer,
    router: SocketAddr,
    from: &str,
    to: &str,
    call_id: &str,
    cseq: u32,
    branch: &str,
    extra: &[&str],
) -> String {
    let mut more = String::new();
    for l in extra {
        more.push_str(l);
        more.push_str("\r\n");
    }
    format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch={branch}\r\nRoute: <sip:{router};lr>\r\nMax-Forwards: 70\r\n\
         From: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nContact: <sip:ua@{me}>\r\n{more}Content-Length: 0\r\n\r\n",
        me = me.addr,
    )
}

/// A SIP peer on one TCP connection, framed with the router's own framer.
pub struct TcpPeer {
    stream: tokio::net::TcpStream,
    framer: wire::Framer,
    pub local: SocketAddr,
    pub remote: SocketAddr,
}

impl TcpPeer {
    pub fn new(stream: tokio::net::TcpStream) -> TcpPeer {
        TcpPeer {
            local: stream.local_addr().expect("local addr"),
            remote: stream.peer_addr().expect("peer addr"),
            stream,
            framer: wire::Framer::default(),
        }
    }

    pub async fn connect(to: SocketAddr) -> TcpPeer {
        TcpPeer::new(
            tokio::net::TcpStream::connect(to)
                .await
                .expect("tcp connect"),
        )
    }

    pub async fn send(&mut self, text: &str) {
        use tokio::io::AsyncWriteExt;
        let text = if text.contains("\r\n") {
            text.to_string()
        } else {
            text.replace('\n', "\r\n")
        };
        self.stream
            .write_all(text.as_bytes())
            .await
            .expect("tcp write");
    }

    /// The next whole message within `timeout`; `None` on timeout or when
    /// the other side closed.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Msg> {
        use tokio::io::AsyncReadExt;
        let until = tokio::time::Instant::now() + timeout;
        let mut chunk = vec![0u8; 16_384];
        loop {
            if let Ok(Some(m)) = self.framer.next_message() {
                return Some(Msg {
                    text: String::from_utf8_lossy(&m).into_owned(),
                    from: self.remote,
                    at: Instant::now(),
                });
            }
            let n = tokio::time::timeout_at(until, self.stream.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.framer.push(&chunk[..n]);
        }
    }

    /// Waits for a message `want` accepts, failing with what was seen.
    pub async fn expect(
        &mut self,
        timeout: Duration,
        what: &str,
        want: impl Fn(&Msg) -> bool,
    ) -> Msg {
        let until = Instant::now() + timeout;
        let mut seen = Vec::new();
        while let Some(m) = self
            .recv(until.saturating_duration_since(Instant::now()))
            .await
        {
            if want(&m) {
                return m;
            }
            seen.push(m.start_line().to_string());
        }
        panic!(
            "{what}: not within {timeout:?} on {}; saw {seen:?}",
            self.local
        )
    }
}

/// A carrier call from a raw peer (From tag `ctag`): INVITE sent, 100
/// Trying seen; the INVITE's text.
pub fn invite(carrier: &Peer, router: SocketAddr, number: &str, call_id: &str) -> String {
    let branch = branch();
    let text = Invite {
        number,
        call_id,
        branch: &branch,
        from_tag: "ctag",
        max_forwards: 70,
        extra: &["Supported: 100rel"],
    }
    .text(carrier, router);
    carrier.send(router, &text);
    carrier.expect(Duration::from_secs(3), "100 Trying", |m| {
        m.is_reply(100, "INVITE")
    });
    text
}

/// The ACK a carrier sends for a 2xx of [`invite`], through the router.
pub fn ack_2xx(carrier: &Peer, router: SocketAddr, ok: &Msg, call_id: &str) {
    let ack = in_dialog(
        "ACK",
        &contact(ok),
        carrier,
        router,
        &format!("<sip:+79161234567@{}>;tag=ctag", carrier.addr),
        &ok.header("to").unwrap(),
        call_id,
        1,
        &branch(),
        &[],
    );
    carrier.send(router, &ack);
}

/// A trunk answering the INVITE it gets next: 200 with To tag `tt` and
/// Contact `sip:pbx@` the trunk. The INVITE.
pub fn answer(trunk: &Peer) -> Msg {
    let inv = trunk.expect(Duration::from_secs(3), "INVITE", |m| m.is_request("INVITE"));
    trunk.send(
        inv.from,
        &inv.reply(
            200,
            "tt",
            &[("Contact", format!("<sip:pbx@{}>", trunk.addr))],
        ),
    );
    inv
}

/// A carrier call through the router answered by `trunk` (To tag `tt`,
/// Contact `sip:pbx@` the trunk) and ACKed end to end: the carrier's 2xx.
pub fn answered_call(
    carrier: &Peer,
    trunk: &Peer,
    router: SocketAddr,
    number: &str,
    call_id: &str,
) -> Msg {
    let s = Duration::from_secs(1);
    invite(carrier, router, number, call_id);
    answer(trunk);
    let ok = carrier.expect(3 * s, "200 OK", |m| m.is_reply(200, "INVITE"));
    ack_2xx(carrier, router, &ok, call_id);
    trunk.expect(2 * s, "ACK", |m| m.is_request("ACK"));
    ok
}

/// The URI of a message's Contact.
pub fn contact(m: &Msg) -> String {
    let c = m.header("contact").unwrap_or_default();
    c.trim_start_matches('<')
        .split('>')
        .next()
        .unwrap_or("")
        .to_string()
}
