//! Fuzz target: see `imaged::fuzzing::page_token`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imaged::fuzzing::page_token(data));
