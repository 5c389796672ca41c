//! cargo-fuzz target `roster`: see `fedmark_tests::fuzzing::roster`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::roster(data));
