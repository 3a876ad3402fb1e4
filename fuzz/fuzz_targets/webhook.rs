//! `cargo fuzz run webhook --features libfuzzer`: see [`zeroci_fuzz::webhook`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zeroci_fuzz::webhook(data));
