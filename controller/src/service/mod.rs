//! gRPC front doors, one file per service. Methods stay short: authenticate, delegate to the engine,
//! map errors through `ControllerError`'s single `From` impl.

pub mod agent;
pub mod control;
