//! Hostile input against the running routing node: the RFC 4475 invalid
//! messages, garbage and truncated datagrams, header floods, a Content-
//! Length lie, a slowloris sender and an oversized message on TCP. Each gets its error reply (or
//! is dropped), the slow TCP senders are cut off at the message deadline,
//! and a real call still goes through afterwards.

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use dialmark_e2e::process::free_port;
use dialmark_e2e::router::{RouterOptions, TestRouter};
use dialmark_e2e::sipp::{self, Scenario, Uas};
use dialmark_e2e::tracker::{config, provision, single_redis, TestTracker};
use sipx_testkit::rfc4475::{self, Expect};

fn invite(number: &str, call_id: &str, content_length: usize, body: &str) -> String {
    format!(
        "INVITE sip:{number}@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bK{call_id}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:79161234567@127.0.0.1>;tag=h{call_id}\r\nTo: <sip:{number}@127.0.0.1>\r\n\
         Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: {content_length}\r\n\r\n{body}"
    )
}

/// Sends `bytes` from a fresh socket; the first reply within `wait`.
fn udp_exchange(port: u16, bytes: &[u8], wait: Duration) -> Option<String> {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s.send_to(bytes, ("127.0.0.1", port)).unwrap();
    let mut buf = vec![0u8; 65_536];
    s.recv(&mut buf)
        .ok()
        .map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
}

/// Reads until the server closes the connection (or `limit`); returns what
/// arrived and when the close came.
fn read_to_close(s: &mut TcpStream, limit: Duration) -> (String, Option<Duration>) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => {
                return (
                    String::from_utf8_lossy(&got).to_string(),
                    Some(start.elapsed()),
                )
            }
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => {
                return (
                    String::from_utf8_lossy(&got).to_string(),
                    Some(start.elapsed()),
                )
            }
        }
    }
    (String::from_utf8_lossy(&got).to_string(), None)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_input_is_refused_and_the_node_keeps_serving() {
    let tracker = TestTracker::start(config("hostile", single_redis(), "").await).await;
    let (_site, _pool, numbers) = provision(&tracker, 1).await;
    let number = numbers[0].trim_start_matches('+').to_string();
    let trunk = free_port();
    let _uas = Uas::start(trunk, Scenario::Builtin("uas"));
    let r = TestRouter::start(
        &tracker.config,
        RouterOptions {
            trunks: &[("a", trunk)],
            router: "tcp_message_timeout_ms = 1000",
            probe: "",
        },
    );
    let port = r.sip_port;

    let checks = tokio::task::spawn_blocking(move || {
        let mut failures = Vec::new();
        // RFC 4475 §3.1.2 (invalid messages): a reply, if any, is an error.
        let mut invalid = 0;
        for case in rfc4475::classified() {
            if !matches!(case.expect, Expect::ParseErr(_) | Expect::ValidateErr(_)) {
                continue;
            }
            invalid += 1;
            if let Some(reply) = udp_exchange(port, case.bytes, Duration::from_millis(300)) {
                let code: u16 = reply
                    .split(' ')
                    .nth(1)
                    .and_then(|c| c.parse().ok())
                    .unwrap_or(0);
                if code < 400 {
                    failures.push(format!("{}: answered {code}", case.name));
                }
            }
        }
        assert!(invalid >= 10, "the corpus has its invalid set ({invalid})");

        // A body shorter than its Content-Length: 400 naming the cause.
        let lie = invite(&number, "lie1", 500, "v=0\r\n");
        let reply = udp_exchange(port, lie.as_bytes(), Duration::from_secs(2)).unwrap_or_default();
        if !reply.starts_with("SIP/2.0 400 Bad Request (body shorter than Content-Length)") {
            failures.push(format!("content-length lie on udp: {reply:?}"));
        }
        // A header flood: 400.
        let flood = invite(&number, "flood1", 0, "").replacen(
            "Max-Forwards: 70\r\n",
            &"X-Flood: y\r\n".repeat(400),
            1,
        );
        let reply =
            udp_exchange(port, flood.as_bytes(), Duration::from_secs(2)).unwrap_or_default();
        if !reply.starts_with("SIP/2.0 400 ") {
            failures.push(format!("header flood: {reply:?}"));
        }
        // Garbage and truncated datagrams: dropped without a word.
        let full = invite(&number, "trunc1", 0, "");
        for junk in [
            vec![0xffu8; 512],
            b"\r\n\r\n".to_vec(),
            full.as_bytes()[..40].to_vec(),
        ] {
            if let Some(reply) = udp_exchange(port, &junk, Duration::from_millis(300)) {
                failures.push(format!("garbage answered: {reply:?}"));
            }
        }

        // TCP, Content-Length lie: 400 and close at the 1 s deadline.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(invite(&number, "tcplie1", 500, "v=0\r\n").as_bytes())
            .unwrap();
        let (got, closed) = read_to_close(&mut s, Duration::from_secs(5));
        if !got.starts_with("SIP/2.0 400 ") || closed.is_none_or(|t| t >= Duration::from_secs(3)) {
            failures.push(format!(
                "tcp content-length lie: {got:?}, closed after {closed:?}"
            ));
        }
        // Slowloris: a byte every 100 ms is still cut off at the deadline.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let start = Instant::now();
        let mut cut = None;
        for b in invite(&number, "slow1", 0, "").bytes() {
            if s.write_all(&[b]).is_err() {
                cut = Some(start.elapsed());
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
            if start.elapsed() > Duration::from_secs(6) {
                break;
            }
        }
        let closed = cut.or_else(|| {
            read_to_close(&mut s, Duration::from_millis(500))
                .1
                .map(|_| start.elapsed())
        });
        if closed.is_none_or(|t| t >= Duration::from_secs(4)) {
            failures.push(format!("slowloris connection not cut: {closed:?}"));
        }
        // Oversized on TCP: 513 and close.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let big = invite(&number, "tcpbig1", 0, "").replacen(
            "Content-Length: 0\r\n",
            &format!("X-Big: {}\r\nContent-Length: 0\r\n", "a".repeat(70_000)),
            1,
        );
        let _ = s.write_all(big.as_bytes());
        let (got, closed) = read_to_close(&mut s, Duration::from_secs(5));
        if !got.starts_with("SIP/2.0 513 ") || closed.is_none() {
            failures.push(format!("tcp oversized: {got:?}, closed after {closed:?}"));
        }
        failures
    })
    .await
    .unwrap();
    assert!(
        checks.is_empty(),
        "{}\nrouter:\n{}",
        checks.join("\n"),
        r.proc.output()
    );

    // Still serving: a real call goes through.
    let n = numbers[0].clone();
    let run = tokio::task::spawn_blocking(move || {
        sipp::uac(
            port,
            &n,
            Scenario::Builtin("uac"),
            "127.0.0.1",
            1,
            &["-d", "200"],
        )
    })
    .await
    .unwrap();
    assert!(
        run.success,
        "call after the abuse:\n{}\n{}",
        run.output,
        r.proc.output()
    );
}
