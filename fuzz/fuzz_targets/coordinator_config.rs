//! cargo-fuzz target `coordinator_config`: see `fedmark_tests::fuzzing::coordinator_config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::coordinator_config(data));
