//! cargo-fuzz target `ws_message`: see [`harness::ws_message`].
#![no_main]

#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::ws_message(data));
