//! Fuzz target: see `imaged::fuzzing::requests`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imaged::fuzzing::requests(data));
