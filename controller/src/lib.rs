//! The ZeroCI controller as a library: `main.rs` only parses arguments, binds the listeners and calls
//! [`server::serve`] with a shutdown token, so tests and embedders can run it in-process.
//!
//! Map (the folders are the architecture):
//! - [`config`] (config.toml, validated before binding) → [`server`] (wiring, shutdown);
//! - [`api`]: the front doors — gRPC for agents and the CLI, HTTP for downloads and webhooks;
//! - [`triggers`]: GitHub webhooks and watched local repositories, turned into jobs;
//! - [`engine`]: the job lifecycle — queue consumers, claims and leases, machines, agent links,
//!   recovery, and [`engine::apply`], the one pure reducer from log events to job records;
//! - seams, each a trait with implementations beside it: [`store`] (job records, logs, reports,
//!   artifacts), [`queue`], [`provisioner`], [`notify`];
//! - [`github`], [`junit`]: clients and parsers with no engine inside.

pub mod api;
pub mod config;
pub mod engine;
pub mod error;
pub mod github;
pub mod init;
pub mod jobs;
pub mod junit;
pub mod metrics;
pub mod notify;
pub mod provisioner;
pub mod queue;
pub mod schedules;
pub mod server;
pub mod store;
pub mod triggers;
pub mod users;
