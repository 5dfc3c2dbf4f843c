//! The routing decision: one call through the pure state machine
//! (`dialmark_router::call::Call`) from INVITE to BYE, answered at once or
//! after a trunk failover, with every reply parsed as the node parses it;
//! and the attribution of a call to a lease (`directory::classify` plus
//! the header for the client's PBX). No sockets, no Redis: the router's
//! CPU per call outside the kernel's UDP path.
use std::collections::HashMap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use dialmark_router::call::{Action, Call, Event, Me, Policy, Setup, Source, TrunkRef};
use dialmark_router::directory;
use dialmark_router::wire;
use dialmark_schemas::rows::{Attribution, NumberStatus};

const INVITE: &str = "INVITE sip:74950000001@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK-4231-1-0\r\n\
From: <sip:79161234567@127.0.0.1:5070>;tag=4231SIPpTag001\r\n\
To: <sip:74950000001@127.0.0.1:5060>\r\n\
Call-ID: 1-4231@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:sipp@127.0.0.1:5070>\r\n\
Max-Forwards: 70\r\n\
Content-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

const T0: u64 = 1_800_000_000_000;

fn setup() -> Setup {
    let trunk = |name: &str, port: u16| TrunkRef {
        name: name.into(),
        addr: format!("127.0.0.1:{port}").parse().expect("addr"),
        transport: Default::default(),
    };
    Setup {
        number: "+74950000001".into(),
        caller: "+79161234567".into(),
        site: "shop".into(),
        pool: "shop".into(),
        status: NumberStatus::Active,
        destinations: vec!["+74951234567".into()],
        trunks: vec![trunk("a", 5091), trunk("b", 5092)],
        source: Source {
            attribution: Attribution::LiveLease,
            session_id: "4b1f0c2d9e8a4f6b8c7d6e5f4a3b2c1d".into(),
            utm_source: "google".into(),
            utm_campaign: "spring".into(),
            ..Source::default()
        },
        headers: vec![(
            "X-Dialmark-Source".into(),
            "attribution=live_lease; utm_source=google; utm_campaign=spring".into(),
        )],
        carrier_reliable: false,
        carrier_via: None,
    }
}

fn policy() -> Policy {
    Policy {
        provisional_timeout_ms: 2_000,
        ringing_timeout_ms: 5_000,
        ring_timeout_ms: 20_000,
        overall_timeout_ms: 60_000,
        max_call_ms: 14_400_000,
        failover_codes: vec![408, 500, 502, 503, 504],
        all_failed_code: 480,
        me: Me {
            udp: "127.0.0.1:5060".into(),
            tcp: "127.0.0.1:5060".into(),
        },
    }
}

/// The trunk's replies to the INVITE the call sends first. The call does
/// not check the branch (the node maps branches to calls), so replies
/// built once serve every iteration.
fn replies(codes: &[(u16, &str)]) -> Vec<Vec<u8>> {
    let (_, out) = Call::start(INVITE.as_bytes().to_vec(), setup(), policy(), T0);
    let sent = out
        .iter()
        .find_map(|a| match a {
            Action::ToTrunk { bytes, .. } => Some(bytes.clone()),
            _ => None,
        })
        .expect("an INVITE to the trunk");
    let inv = wire::parse(&sent).expect("forwarded INVITE parses");
    codes
        .iter()
        .map(|(code, reason)| wire::response(&inv, *code, reason, Some("trunktag"), &[]))
        .collect()
}

/// One call: start, then each (attempt, reply) parsed and handled, then BYE.
fn call(script: &[(u8, &[u8])]) -> usize {
    let (mut call, mut actions) = Call::start(INVITE.as_bytes().to_vec(), setup(), policy(), T0);
    let mut now = T0;
    for (attempt, bytes) in script {
        now += 20;
        let msg = wire::parse(bytes).expect("reply parses");
        actions.extend(call.handle(
            Event::Response {
                attempt: *attempt,
                msg: &msg,
            },
            now,
        ));
    }
    actions.extend(call.handle(Event::Bye { from_caller: true }, now + 60_000));
    assert!(call.is_finished());
    actions.len()
}

fn routing(c: &mut Criterion) {
    let mut g = c.benchmark_group("routing");
    g.throughput(Throughput::Elements(1));
    let ok = replies(&[(100, "Trying"), (180, "Ringing"), (200, "OK")]);
    let answered: Vec<(u8, &[u8])> = ok.iter().map(|r| (1u8, r.as_slice())).collect();
    g.bench_function("call answered: INVITE, 100, 180, 200, BYE", |b| {
        b.iter(|| call(black_box(&answered)))
    });
    let busy = replies(&[(503, "Service Unavailable")]);
    let mut failover: Vec<(u8, &[u8])> = vec![(1, busy[0].as_slice())];
    failover.extend(ok.iter().map(|r| (2u8, r.as_slice())));
    g.bench_function("call failover: A 503, B 100, 180, 200, BYE", |b| {
        b.iter(|| call(black_box(&failover)))
    });

    let lease: HashMap<String, String> = [
        ("session", "4b1f0c2d9e8a4f6b8c7d6e5f4a3b2c1d"),
        ("visitor", "9f8e7d6c5b4a39281706f5e4d3c2b1a0"),
        ("site", "shop"),
        ("expires_at", "1800000900"),
        ("utm_source", "google"),
        ("utm_medium", "cpc"),
        ("utm_campaign", "spring"),
        ("gclid", "Cj0KCQbench1"),
        ("referrer", "https://www.google.com/"),
        (
            "landing_url",
            "https://shop.test/?utm_source=google&utm_campaign=spring",
        ),
        ("country", "RU"),
        ("region", "RU-MOW"),
        ("city", "Moscow"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let none = HashMap::new();
    g.bench_function("attribute to a live lease + source header", |b| {
        b.iter(|| {
            let s = directory::classify(black_box(&lease), &none, 1_800_000_000, 1800);
            directory::source_header(&s)
        })
    });
    g.finish();
}

criterion_group!(benches, routing);
criterion_main!(benches);
