//! Any bytes through what the node does with a datagram or a TCP stream:
//! framing, parsing, the header accessors, and the error reply. None may
//! panic, and a reply must itself be valid SIP.
#![no_main]

use dialmark_router::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::frame(data);
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
        }
        Err(e) => {
            if let Some(reply) = wire::error_reply(data, &e) {
                wire::parse(&reply).expect("the error reply parses");
            }
        }
    }
});
