//! Where jobs come from besides the control API: GitHub webhook deliveries and watched local
//! repositories. Each trigger turns an outside event into a `NewJob` and calls `Engine::submit`.

pub mod github_webhook;
pub mod local_refs;
