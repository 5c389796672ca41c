//! cargo-fuzz target `http_request`: see `fedmark_tests::fuzzing::http_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::http_request(data));
