//! Any bytes through what the node does with a datagram or a TCP stream:
//! framing (whole and in two chunks), parsing, the header accessors, the
//! Via stamping, and the error reply. None may panic, and a reply must
//! itself be valid SIP (but for the headers it copies from the request).
#![no_main]

use dialmark_router::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::frame(data);
    // A TCP stream arriving in two reads frames like one read would.
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut framer = wire::Framer::default();
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
    match wire::parse(data) {
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
                let _ = wire::stamp_via(v, "192.0.2.1:5060".parse().unwrap());
                let _ = wire::via_destination(v);
            }
        }
        Err(e) => {
            if let Some(reply) = wire::error_reply(data, &e) {
                assert_eq!(
                    wire::frame(&reply).ok().flatten(),
                    Some(reply.len()),
                    "the error reply is one whole message"
                );
                match wire::parse(&reply) {
                    Ok(_) => {}
                    // Via, From, To and CSeq are copied from the request
                    // (RFC 3261 §8.2.6.2): they may be as malformed as its own.
                    Err(wire::ParseError::Bad("Via" | "From" | "To" | "CSeq")) => {}
                    Err(e) => panic!("the error reply does not parse: {e}"),
                }
            }
        }
    }
});
