//! Wire parsing: hand-built cases and the RFC 4475 torture corpus.

use sipx_testkit::rfc4475::{self, Expect};

use super::*;

const INVITE: &[u8] = b"INVITE sip:+74950000001@127.0.0.1 SIP/2.0\r\n\
v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-a,SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-b\r\n\
Max-Forwards: 70\r\n\
f: \"Caller\" <sip:+79161234567@127.0.0.1>;tag=t1\r\n\
t: <sip:+74950000001@127.0.0.1>\r\n\
i: abc@host\r\n\
CSeq: 7 INVITE\r\n\
Route: <sip:127.0.0.1:5060;lr>, <sip:next.example;lr>\r\n\
X-Custom: keep me  exactly\r\n\
l: 3\r\n\r\nabc";

#[test]
fn compact_forms_and_accessors() {
    let m = parse(INVITE).unwrap();
    assert_eq!(m.method(), Some("INVITE"));
    assert_eq!(m.uri(), Some("sip:+74950000001@127.0.0.1"));
    assert_eq!(m.call_id(), "abc@host");
    assert_eq!(m.cseq(), Some((7, "INVITE".into())));
    assert_eq!(m.branch(), Some("z9hG4bK-a"));
    assert_eq!(m.from_tag(), Some("t1"));
    assert_eq!(m.to_tag(), None);
    assert_eq!(m.max_forwards(), 70);
    assert_eq!(m.body(), b"abc");
    assert_eq!(uri_user(m.uri().unwrap()), Some("+74950000001"));
    assert_eq!(uri_user("<sip:84951234567;npdi@h>"), Some("84951234567"));
    assert_eq!(
        uri_user("tel:+74951234567;phone-context=x"),
        Some("+74951234567")
    );
    assert_eq!(
        uri_hostport("<sip:u@127.0.0.1:5070;lr>"),
        Some("127.0.0.1:5070")
    );
}

#[test]
fn forward_rewrites_only_what_it_must() {
    let m = parse(INVITE).unwrap();
    let add = [(
        "X-Dialmark-Source".to_string(),
        "attribution=none".to_string(),
    )];
    let add: Vec<(&str, String)> = add.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let out = Forward {
        msg: &m,
        uri: Some("sip:+74951234567@127.0.0.1:5091"),
        via: "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-me",
        sender_via: Some("SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-a;received=10.9.9.9"),
        record_route: Some("<sip:127.0.0.1:5060;lr>"),
        own: &["127.0.0.1:5060"],
        max_forwards: 69,
        add: &add,
    }
    .build();
    let text = String::from_utf8(out.clone()).unwrap();
    assert!(text.starts_with("INVITE sip:+74951234567@127.0.0.1:5091 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-me\r\n"));
    assert!(text.contains("Route: <sip:next.example;lr>\r\n"), "{text}");
    assert!(!text.contains("<sip:127.0.0.1:5060;lr>, "));
    assert!(
        text.contains("X-Custom: keep me  exactly\r\n"),
        "unknown headers byte-exact"
    );
    assert!(
        text.contains(
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-a;received=10.9.9.9,SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK-b\r\n"
        ),
        "the sender's Via stamped, the rest kept: {text}"
    );
    assert_eq!(text.matches("Max-Forwards").count(), 1);
    let again = parse(&out).unwrap();
    assert_eq!(again.branch(), Some("z9hG4bK-me"));
    assert_eq!(again.body(), b"abc");
}

#[test]
fn responses_lose_only_our_via() {
    let resp = b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-me, SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-a\r\n\
From: <sip:a@h>;tag=1\r\nTo: <sip:b@h>;tag=2\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let m = parse(resp).unwrap();
    let out = String::from_utf8(strip_top_via(&m)).unwrap();
    assert!(
        out.starts_with(
            "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-a\r\n"
        ),
        "{out}"
    );
    assert_eq!(parse(out.as_bytes()).unwrap().branch(), Some("z9hG4bK-a"));
}

#[test]
fn tcp_framing() {
    let two = [INVITE, INVITE].concat();
    assert_eq!(frame(&two), Ok(Some(INVITE.len())));
    assert_eq!(frame(&INVITE[..INVITE.len() - 1]), Ok(None));
    assert_eq!(frame(&INVITE[..40]), Ok(None));
    let no_cl = b"OPTIONS sip:x@h SIP/2.0\r\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: 1\r\nCSeq: 1 OPTIONS\r\n\r\n";
    assert!(matches!(frame(no_cl), Err(ParseError::Missing(_))));
    let lie = b"OPTIONS sip:x@h SIP/2.0\r\nContent-Length: 99999999\r\n\r\n";
    assert_eq!(frame(lie), Err(ParseError::TooLarge));
    assert_eq!(
        frame(&vec![b'a'; MAX_MESSAGE + 1]),
        Err(ParseError::TooLarge)
    );
}

#[test]
fn framer_splits_a_stream_and_resumes_its_search() {
    let mut f = Framer::default();
    let stream = [b"\r\n\r\n".as_slice(), INVITE, INVITE].concat();
    // Byte by byte: each byte is searched once, and both messages come out.
    let mut out = Vec::new();
    for b in &stream {
        f.push(std::slice::from_ref(b));
        while let Some(m) = f.next_message().unwrap() {
            out.push(m);
        }
    }
    assert_eq!(out, vec![INVITE.to_vec(), INVITE.to_vec()]);
    assert!(f.buffered().is_empty());
    let mut f = Framer::default();
    f.push(b"OPTIONS sip:x@h SIP/2.0\r\nContent-Length: 99999999\r\n\r\n");
    assert_eq!(f.next_message(), Err(ParseError::TooLarge));
    let mut f = Framer::default();
    f.push(&vec![b'a'; MAX_MESSAGE + 1]);
    assert_eq!(f.next_message(), Err(ParseError::TooLarge));
}

#[test]
fn framing_is_linear_in_the_bytes_read() {
    // A 60 kB head arriving a byte at a time, then a small message: a
    // search from the message's start on every read would look at about
    // 1.8 G bytes; resuming where the last search stopped, each byte is
    // looked at about once.
    let head = [
        b"OPTIONS sip:x@h SIP/2.0\r\nContent-Length: 0\r\nX-Padding: ".as_slice(),
        &[b'a'; 60_000],
        b"\r\n\r\n",
    ]
    .concat();
    let stream = [head.as_slice(), INVITE].concat();
    let mut f = Framer::default();
    let mut out = 0;
    for b in &stream {
        f.push(std::slice::from_ref(b));
        while f.next_message().unwrap().is_some() {
            out += 1;
        }
    }
    assert_eq!(out, 2);
    assert!(
        f.searched <= 4 * stream.len(),
        "searched {} bytes to frame {}",
        f.searched,
        stream.len()
    );
}

#[test]
fn hostile_input_never_panics() {
    let mut cases: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"\r\n\r\n".to_vec(),
        b"INVITE\r\n\r\n".to_vec(),
        b"SIP/2.0 99999 x\r\n\r\n".to_vec(),
        vec![0xff; 300],
        [
            b"INVITE sip:a@b SIP/2.0\r\n".as_slice(),
            &b"X: y\r\n".repeat(300),
            b"\r\n",
        ]
        .concat(),
        [
            b"INVITE sip:a@b SIP/2.0\r\nVia: ".as_slice(),
            &vec![b'a'; 70_000],
            b"\r\n\r\n",
        ]
        .concat(),
    ];
    for n in 0..INVITE.len() {
        cases.push(INVITE[..n].to_vec());
    }
    for c in &cases {
        let _ = parse(c);
        let _ = frame(c);
    }
    let flood = [
        b"INVITE sip:a@b SIP/2.0\r\n".as_slice(),
        &b"X: y\r\n".repeat(300),
        b"\r\n",
    ]
    .concat();
    assert_eq!(parse(&flood).unwrap_err(), ParseError::TooManyHeaders);
}

/// Cases whose named header we never read: parsing may accept them.
const HEADERS_WE_IGNORE: &[&str] = &["Date", "Contact"];

/// The fuzz target's checks (`wire::exercise`) on its seed corpus, on
/// stable Rust: every RFC 4475 torture message, whole and cut short every
/// 7 bytes (a stream read part way).
#[test]
fn the_fuzz_targets_checks_hold_on_the_torture_corpus() {
    let mut runs = 0;
    for case in rfc4475::classified() {
        for n in (0..case.bytes.len()).step_by(7).chain([case.bytes.len()]) {
            exercise(&case.bytes[..n]);
            runs += 1;
        }
    }
    assert!(runs > 1_000, "{runs}");
}

#[test]
fn rfc4475_torture_corpus() {
    let mut failures = Vec::new();
    for case in rfc4475::classified() {
        let result = parse(case.bytes);
        let ok = match case.expect {
            Expect::ParseOk => result.is_ok(),
            Expect::ParseErr(_) | Expect::ValidateErr(_) => result.is_err(),
            Expect::HeaderErr(h) if HEADERS_WE_IGNORE.contains(&h) => true,
            Expect::HeaderErr(_) => result.is_err(),
            _ => true,
        };
        if !ok {
            failures.push(format!(
                "{} ({:?}): {:?}",
                case.name,
                case.expect,
                result.map(|m| m.start.clone())
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "RFC 4475 mismatches:\n{}",
        failures.join("\n")
    );
}

#[test]
fn unparseable_requests_get_an_error_reply() {
    let short = b"INVITE sip:1@x SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1\r\n\
        f: <sip:a@x>;tag=1\r\nTo: <sip:1@x>\r\nCall-ID: c1\r\nCSeq: 1 INVITE\r\nContent-Length: 99\r\n\r\nv=0\r\n";
    let err = parse(short).unwrap_err();
    assert_eq!(err, ParseError::ShortBody);
    let reply = String::from_utf8(error_reply(short, &err).unwrap()).unwrap();
    assert!(
        reply.starts_with("SIP/2.0 400 Bad Request (body shorter than Content-Length)\r\n"),
        "{reply}"
    );
    let parsed = parse(reply.as_bytes()).expect("the reply itself is valid SIP");
    assert_eq!(
        parsed.top_via(),
        Some("SIP/2.0/UDP 10.0.0.1;branch=z9hG4bK1")
    );
    assert!(reply.contains("To: <sip:1@x>;tag="), "{reply}");
    assert!(reply.contains("From: <sip:a@x>;tag=1\r\n"), "{reply}");

    let huge = [short.as_slice(), &vec![b'a'; MAX_MESSAGE]].concat();
    let reply = error_reply(&huge, &ParseError::TooLarge).unwrap();
    assert!(reply.starts_with(b"SIP/2.0 513 Message Too Large\r\n"));

    let ack = String::from_utf8_lossy(short).replacen("INVITE sip", "ACK sip", 1);
    assert_eq!(error_reply(ack.as_bytes(), &ParseError::ShortBody), None);
    let no_via = String::from_utf8_lossy(short).replacen("Via:", "X-Via:", 1);
    assert_eq!(error_reply(no_via.as_bytes(), &ParseError::ShortBody), None);
    assert_eq!(
        error_reply(b"SIP/2.0 200 OK\r\n\r\n", &ParseError::StartLine),
        None
    );
    assert_eq!(error_reply(&[0xff; 64], &ParseError::StartLine), None);
}

#[test]
fn sender_via_is_stamped_per_rfc_3581() {
    let from: std::net::SocketAddr = "192.0.2.7:40000".parse().unwrap();
    assert_eq!(
        stamp_via("SIP/2.0/UDP 192.0.2.7:5060;branch=z9hG4bK1", from),
        None,
        "sent-by is the source and no rport asked: untouched"
    );
    assert_eq!(
        stamp_via("SIP/2.0/UDP sbc.example:5060;branch=z9hG4bK1", from).as_deref(),
        Some("SIP/2.0/UDP sbc.example:5060;branch=z9hG4bK1;received=192.0.2.7")
    );
    assert_eq!(
        stamp_via("SIP/2.0/UDP 10.0.0.1:5060;rport;branch=z9hG4bK1", from).as_deref(),
        Some("SIP/2.0/UDP 10.0.0.1:5060;rport=40000;branch=z9hG4bK1;received=192.0.2.7")
    );
    // Responses then go where the stamps say.
    assert_eq!(
        via_destination("SIP/2.0/UDP 10.0.0.1:5060;rport=40000;branch=z9hG4bK1;received=192.0.2.7"),
        Some((from, false))
    );
    assert_eq!(
        via_destination("SIP/2.0/TCP 192.0.2.9;branch=z9hG4bK1"),
        Some(("192.0.2.9:5060".parse().unwrap(), true))
    );
    assert_eq!(
        via_destination("SIP/2.0/UDP sbc.example;branch=z9hG4bK1"),
        None
    );
}
