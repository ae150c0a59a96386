//! Fuzz target: see `imaged::fuzzing::authority`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| imaged::fuzzing::authority(data));
