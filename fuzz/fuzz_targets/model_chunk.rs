//! cargo-fuzz target `model_chunk`: see `fedmark_tests::fuzzing::model_chunk`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::model_chunk(data));
