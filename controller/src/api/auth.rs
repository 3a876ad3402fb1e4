//! Who is calling: the identity in the TLS client certificate, and what that identity may do.
//! Message bodies never decide identity.

use tonic::Request;
use zeroci::pki::{Identity, Role};

use crate::error::ControllerError;
use crate::users::Revocations;

/// The identity of the peer's certificate. Fails when no certificate was presented (the TLS layer has
/// already refused certificates that do not chain to our CA).
pub fn peer_identity<T>(request: &Request<T>) -> Result<Identity, ControllerError> {
    let certs = request.peer_certs().ok_or_else(|| {
        ControllerError::Unauthenticated("a client certificate is required".into())
    })?;
    let leaf = certs.first().ok_or_else(|| {
        ControllerError::Unauthenticated("a client certificate is required".into())
    })?;
    Identity::from_der(leaf.as_ref()).map_err(|e| ControllerError::Unauthenticated(e.to_string()))
}

/// The control API's interceptor: every call needs a user certificate that is not revoked, whatever
/// the method, so a method added later cannot forget it. Methods then check the role they need with
/// [`authorize_user`].
#[allow(clippy::result_large_err)] // tonic's interceptor signature
pub fn require_user_certificate(
    request: Request<()>,
    revocations: &Revocations,
) -> Result<Request<()>, tonic::Status> {
    let name = authorize_user(&request, Access::Read)?;
    let revoked = request
        .peer_certs()
        .and_then(|certs| certs.first().cloned())
        .is_some_and(|leaf| revocations.is_revoked(leaf.as_ref()));
    if revoked {
        return Err(ControllerError::Unauthenticated(format!(
            "the certificate of user {name} has been revoked"
        ))
        .into());
    }
    Ok(request)
}

/// What a control-API caller may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// Checks a control-API call; returns the user name for auditing.
pub fn authorize_user<T>(request: &Request<T>, access: Access) -> Result<String, ControllerError> {
    match peer_identity(request)? {
        Identity::User {
            role: Role::Admin,
            name,
        } => Ok(name),
        Identity::User {
            role: Role::Viewer,
            name,
        } if access == Access::Read => Ok(name),
        Identity::User {
            role: Role::Viewer,
            name,
        } => Err(ControllerError::PermissionDenied(format!(
            "user {name} has the viewer role: read-only"
        ))),
        Identity::Agent { job_id, .. } => Err(ControllerError::PermissionDenied(format!(
            "agent certificate (job {job_id}) cannot use the control API"
        ))),
        Identity::Controller => Err(ControllerError::PermissionDenied(
            "controller certificate cannot act as a client".into(),
        )),
    }
}
