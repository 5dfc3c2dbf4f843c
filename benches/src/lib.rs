//! dialmark benchmarks. The criterion micro-benches live in `benches/`;
//! load benches (SIPp, HTTP, Kamailio side by side) are scripts described in
//! `benches/README.md`. This library holds inputs shared by them.
#![forbid(unsafe_code)]

/// Phone numbers as carriers and web pages write them.
pub const NUMBER_SAMPLES: &[&str] = &[
    "+7 (495) 123-45-67",
    "84951234567",
    "8 495 123 45 67",
    "74951234567",
    "tel:+7-495-123-45-67;phone-context=x",
];
