//! cargo-fuzz target `spec`: see `fedmark_tests::fuzzing::spec`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::spec(data));
