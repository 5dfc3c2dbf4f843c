//! Helpers for the end-to-end tests: where `ops/test` started the real
//! services (read from environment variables it sets), fresh databases per
//! test, and child processes that are killed when a test ends.
#![forbid(unsafe_code)]

pub mod cluster;
pub mod env;
pub mod http;
pub mod process;
pub mod rawsip;
pub mod router;
pub mod services;
pub mod sipp;
pub mod stack;
pub mod tracker;
pub mod webhook;
pub mod world;
