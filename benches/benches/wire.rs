//! SIP on the wire (`dialmark_router::wire`): framing a TCP stream, parsing
//! the header index, reading the fields every message needs, and the two
//! rewrites of a proxy (forwarding an INVITE, stripping our Via from a
//! reply). Each runs once or more per SIP message the router handles.
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dialmark_router::wire::{self, Forward};

/// A carrier's INVITE with SDP, as SIPp's uac sends it (~750 bytes).
const INVITE: &str = "INVITE sip:74950000100@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4231-1-0;rport\r\n\
From: \"sipp\" <sip:79161234567@127.0.0.1:5070>;tag=4231SIPpTag001\r\n\
To: <sip:74950000100@127.0.0.1:5060>\r\n\
Call-ID: 1-4231@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:sipp@127.0.0.1:5070>\r\n\
Max-Forwards: 70\r\n\
Subject: Performance Test\r\n\
User-Agent: carrier-sbc/4.2\r\n\
Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE\r\n\
Supported: timer, 100rel\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 204\r\n\
\r\n\
v=0\r\n\
o=user1 53655765 2353687637 IN IP4 127.0.0.1\r\n\
s=-\r\n\
c=IN IP4 127.0.0.1\r\n\
t=0 0\r\n\
m=audio 6000 RTP/AVP 0 8 101\r\n\
a=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\n\
a=sendrecv\r\n";

/// A trunk's 180 to our forwarded INVITE: our Via on top, Record-Route.
const RINGING: &str = "SIP/2.0 180 Ringing\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-dm-4b1f0c2d9e8a4f6b8c7d6e5f4a3b2c1d-1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4231-1-0;rport=5070\r\n\
Record-Route: <sip:127.0.0.1:5060;lr>\r\n\
From: \"sipp\" <sip:79161234567@127.0.0.1:5070>;tag=4231SIPpTag001\r\n\
To: <sip:74951234567@127.0.0.1:5091>;tag=trunk-8812\r\n\
Call-ID: 1-4231@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:74951234567@127.0.0.1:5091>\r\n\
Content-Length: 0\r\n\r\n";

/// The INVITE in compact header form (`v: f: t: i: l:`), folded Subject.
const COMPACT: &str = "INVITE sip:74950000100@127.0.0.1:5060 SIP/2.0\r\n\
v: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4231-1-0\r\n\
f: <sip:79161234567@127.0.0.1:5070>;tag=4231SIPpTag001\r\n\
t: <sip:74950000100@127.0.0.1:5060>\r\n\
i: 1-4231@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
m: <sip:sipp@127.0.0.1:5070>\r\n\
Max-Forwards: 70\r\n\
Subject: a subject\r\n folded onto a second line\r\n\
l: 0\r\n\r\n";

fn wire(c: &mut Criterion) {
    let mut g = c.benchmark_group("wire");
    g.throughput(Throughput::Elements(1));
    // Two INVITEs back to back, as they arrive on a TCP connection.
    let stream = [INVITE.as_bytes(), INVITE.as_bytes()].concat();
    g.bench_function("frame INVITE on a TCP stream", |b| {
        b.iter(|| wire::frame(black_box(&stream)).expect("valid"))
    });
    // What the node reads of every request before routing it.
    g.bench_function("parse INVITE + read Call-ID, branch, CSeq, tags", |b| {
        b.iter(|| {
            let m = wire::parse(black_box(INVITE.as_bytes())).expect("valid");
            black_box((m.call_id(), m.branch(), m.cseq(), m.from_tag(), m.to_tag()));
        })
    });
    g.bench_function("parse compact-form INVITE", |b| {
        b.iter(|| {
            wire::parse(black_box(COMPACT.as_bytes()))
                .expect("valid")
                .headers
                .len()
        })
    });
    g.bench_function("parse 180 + read status, branch", |b| {
        b.iter(|| {
            let m = wire::parse(black_box(RINGING.as_bytes())).expect("valid");
            black_box((m.status(), m.branch()));
        })
    });
    let invite = wire::parse(INVITE.as_bytes()).expect("valid");
    let add = [(
        "X-Dialmark-Source",
        "attribution=live_lease; utm_source=google; utm_campaign=spring".to_string(),
    )];
    g.bench_function("forward INVITE (new R-URI, Via, Record-Route, header added)", |b| {
        b.iter(|| {
            Forward {
                msg: black_box(&invite),
                uri: Some("sip:+74951234567@127.0.0.1:5091"),
                via: "SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-dm-4b1f0c2d9e8a4f6b8c7d6e5f4a3b2c1d-1",
                sender_via: None,
                record_route: Some("<sip:127.0.0.1:5060;lr>"),
                own: &[],
                max_forwards: 69,
                add: &add,
            }
            .build()
        })
    });
    let ringing = wire::parse(RINGING.as_bytes()).expect("valid");
    g.bench_function("strip our Via from a 180", |b| {
        b.iter(|| wire::strip_top_via(black_box(&ringing)))
    });
    g.bench_function("100 Trying for an INVITE", |b| {
        b.iter(|| wire::response(black_box(&invite), 100, "Trying", None, &[]))
    });
    g.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
