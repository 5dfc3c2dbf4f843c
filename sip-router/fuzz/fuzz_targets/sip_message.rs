//! Any bytes through what the node does with a datagram or a TCP stream:
//! framing (whole and in two chunks), parsing, the header accessors, the
//! Via stamping, and the error reply. None may panic, and a reply must
//! itself be valid SIP (but for the headers it copies from the request).
#![no_main]

use dialmark_router::wire;
use libfuzzer_sys::fuzz_target;

// The checks live in `wire::exercise`, so `ops/test` runs them on the
// RFC 4475 corpus on stable Rust too (`wire::tests`).
fuzz_target!(|data: &[u8]| wire::exercise(data));
