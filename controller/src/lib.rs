//! The ZeroCI controller as a library: `main.rs` only parses arguments, binds the listener and calls
//! [`server::serve`] with a shutdown token, so tests and embedders can run it in-process.
//!
//! Map: [`config`] (config.toml) → [`server`] (wiring, shutdown) → [`engine`] (job lifecycle, workers,
//! supervision) with [`session`] (agent events) and [`recovery`] (restart); [`service`] holds the gRPC
//! front doors, [`logs`] serves journals; seams: [`store`], [`queue`], [`provisioner`].

pub mod apply;
pub mod auth;
pub mod config;
pub mod engine;
pub mod error;
pub mod github;
pub mod http;
pub mod init;
pub mod jobs;
pub mod junit;
pub mod logs;
pub mod masking;
pub mod notify;
pub mod provisioner;
pub mod queue;
pub mod recovery;
pub mod reports;
pub mod server;
pub mod service;
pub mod session;
pub mod store;
pub mod watch;
pub mod webhooks;
