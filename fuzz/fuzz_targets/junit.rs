//! `cargo fuzz run junit --features libfuzzer`: see [`zeroci_fuzz::junit`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zeroci_fuzz::junit(data));
