//! cargo-fuzz target `admin_request`: see `fedmark_tests::fuzzing::admin_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::admin_request(data));
