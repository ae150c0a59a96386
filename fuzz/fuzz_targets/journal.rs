//! Fuzz target: see `imaged::fuzzing::journal`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imaged::fuzzing::journal(data));
