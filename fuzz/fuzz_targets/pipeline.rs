//! `cargo fuzz run pipeline --features libfuzzer`: see [`zeroci_fuzz::pipeline`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zeroci_fuzz::pipeline(data));
