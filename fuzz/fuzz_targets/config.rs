//! `cargo fuzz run config --features libfuzzer`: see [`zeroci_fuzz::config`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zeroci_fuzz::config(data));
