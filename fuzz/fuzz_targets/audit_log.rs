//! cargo-fuzz target `audit_log`: see `fedmark_tests::fuzzing::audit_log`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fedmark_tests::fuzzing::audit_log(data));
