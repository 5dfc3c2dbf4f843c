//! Any body through the decoding of `POST /v1/visits`: JSON, id checks and
//! field cutting must refuse or accept, never panic, and an accepted visit
//! has its fields within bounds.
#![no_main]

use dialmark_tracker::visit::VisitRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = VisitRequest::decode(data) {
        assert!(!v.site.is_empty() && v.site.len() <= 64);
        assert!(v.url.len() <= 2048 && v.touch.referrer.len() <= 2048);
    }
});
