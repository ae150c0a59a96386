//! Fuzz target: see `imaged::fuzzing::validation`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imaged::fuzzing::validation(data));
