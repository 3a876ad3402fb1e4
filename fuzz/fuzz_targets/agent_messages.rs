//! `cargo fuzz run agent_messages --features libfuzzer`: see [`zeroci_fuzz::agent_messages`].
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| zeroci_fuzz::agent_messages(data));
