//! The front doors: the gRPC services (agents, the CLI) and the HTTP listener. Handlers stay short:
//! authenticate, delegate to the engine, map errors through `ControllerError`'s single conversion.

pub mod actions;
pub mod agent_service;
pub mod ansi;
pub mod auth;
pub mod control_service;
pub mod events;
pub mod github_login;
pub mod http;
pub mod listing;
pub mod logview;
pub mod pages;
pub mod pool_service;
pub mod rate_limit;
pub mod schedule_http;
pub mod schedules;
pub mod session;
pub mod status;
