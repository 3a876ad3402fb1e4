//! End-to-end tests: the real `zeroci-controller`, `zeroci-agent` and `zeroci` binaries, one fresh
//! installation (CA, certificates, state) per test. All of them live in this one test binary.

mod bad_input;
mod browser;
mod faults;
mod github;
mod github_signin;
mod harness;

mod isolation;
mod jobs;
mod lifecycle;
mod notify_webhook;
mod pipelines;
mod pool;
mod production;
mod restart;
mod schedules;
mod security;
mod ssh;
mod telegram;
mod triggers;
mod vm;
mod web;
