//! cargo-fuzz target `input_chunk`: see `fedmark_tests::fuzzing::input_chunk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::input_chunk(data));
