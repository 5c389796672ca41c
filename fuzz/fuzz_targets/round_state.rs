//! cargo-fuzz target `round_state`: see `fedmark_tests::fuzzing::round_state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::round_state(data));
