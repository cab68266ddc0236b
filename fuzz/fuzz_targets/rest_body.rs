//! cargo-fuzz target `rest_body`: see [`harness::rest_body`].
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::rest_body(data));
