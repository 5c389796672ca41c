//! cargo-fuzz target `csv_rows`: see `fedmark_tests::fuzzing::csv_rows`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::csv_rows(data));
