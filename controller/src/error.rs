//! The controller's error type and its one mapping to gRPC status codes.

use tonic::Status;
use tracing::error;

use crate::provisioner::ProvisionError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    PermissionDenied(String),
    #[error("{0}")]
    Unauthenticated(String),
    /// Try again later (for example while the controller stops or restarts).
    #[error("{0}")]
    Unavailable(String),
    /// The caller used up its share (too many failed attempts): try again later.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error("certificate: {0}")]
    Pki(#[from] zeroci::pki::PkiError),
    /// A bug of ours (a page that cannot be rendered, say): logged, never shown in detail.
    #[error("{0}")]
    Internal(String),
}

impl ControllerError {
    /// A write was refused because the job's record changed under this controller: another one
    /// claimed the job (its lease here expired).
    pub fn is_lease_lost(&self) -> bool {
        matches!(self, ControllerError::Store(StoreError::Conflict { .. }))
    }
}

impl From<ControllerError> for Status {
    fn from(err: ControllerError) -> Status {
        match err {
            ControllerError::NotFound(m) => Status::not_found(m),
            ControllerError::InvalidArgument(m) => Status::invalid_argument(m),
            ControllerError::FailedPrecondition(m) => Status::failed_precondition(m),
            ControllerError::PermissionDenied(m) => Status::permission_denied(m),
            ControllerError::Unauthenticated(m) => Status::unauthenticated(m),
            ControllerError::Unavailable(m) => Status::unavailable(m),
            ControllerError::ResourceExhausted(m) => Status::resource_exhausted(m),
            other => {
                // Details go to the log; the client gets a short message, not our internals.
                error!(error = ?other, "internal error");
                Status::internal("internal error in the controller; see its log")
            }
        }
    }
}
