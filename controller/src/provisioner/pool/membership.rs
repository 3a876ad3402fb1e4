//! Who may join: join tokens made, listed and revoked by admins, and checked when a host joins. Kept
//! apart from the engine: the control API and the pool API both use it, nothing else does.

use std::sync::Arc;

use tracing::info;
use zeroci::pb;

use super::hosts::PoolHosts;
use super::tokens::JoinToken;
use crate::error::ControllerError;
use crate::store::JoinTokenStore;

pub struct PoolMembership {
    tokens: Arc<dyn JoinTokenStore>,
    /// `None`: this controller does not use pool machines; hosts are told so.
    hosts: Option<Arc<PoolHosts>>,
}

/// The one answer to every refused token: which part was wrong is not the caller's business.
const REFUSED: &str =
    "unknown or revoked join token; make one with `zeroci agents token create NAME`";

impl PoolMembership {
    pub fn new(tokens: Arc<dyn JoinTokenStore>, hosts: Option<Arc<PoolHosts>>) -> PoolMembership {
        PoolMembership { tokens, hosts }
    }

    pub fn hosts(&self) -> Option<&Arc<PoolHosts>> {
        self.hosts.as_ref()
    }

    /// A new token named `name`: the token, shown once, and what is kept of it.
    pub async fn create_token(
        &self,
        name: &str,
        now_ms: i64,
    ) -> Result<(String, pb::JoinTokenInfo), ControllerError> {
        let (record, token) =
            JoinToken::issue(name, now_ms).map_err(ControllerError::InvalidArgument)?;
        if !self.tokens.add_join_token(&record).await? {
            return Err(ControllerError::FailedPrecondition(format!(
                "a join token named {name:?} exists; revoke it first or pick another name"
            )));
        }
        info!(token = %record.name, id = %record.id, "join token created");
        Ok((token, self.info(&record)))
    }

    pub async fn tokens(&self) -> Result<Vec<pb::JoinTokenInfo>, ControllerError> {
        Ok(self
            .tokens
            .join_tokens()
            .await?
            .iter()
            .map(|t| self.info(t))
            .collect())
    }

    /// Removes the token and drops the hosts joined with it to this controller (other controllers
    /// drop theirs at their next check, within a heartbeat).
    pub async fn revoke(&self, name: &str) -> Result<pb::JoinTokenInfo, ControllerError> {
        let Some(record) = self.tokens.remove_join_token(name).await? else {
            return Err(ControllerError::NotFound(format!(
                "no join token named {name:?}"
            )));
        };
        let info = self.info(&record);
        if let Some(hosts) = &self.hosts {
            hosts.kick_token(&record.id);
        }
        info!(token = %record.name, id = %record.id, hosts = info.hosts_joined, "join token revoked");
        Ok(info)
    }

    /// The token a joining host presented, if it is valid now.
    pub async fn authenticate(&self, presented: &str) -> Result<JoinToken, ControllerError> {
        let refused = || ControllerError::Unauthenticated(REFUSED.into());
        let (id, secret) = JoinToken::parse(presented).ok_or_else(refused)?;
        match self.tokens.join_token(id).await? {
            Some(record) if record.accepts(secret) => Ok(record),
            _ => Err(refused()),
        }
    }

    /// Whether the token with id `id` still exists (a host's stream checks on every heartbeat).
    pub async fn still_valid(&self, id: &str) -> Result<bool, ControllerError> {
        Ok(self.tokens.join_token(id).await?.is_some())
    }

    fn info(&self, token: &JoinToken) -> pb::JoinTokenInfo {
        pb::JoinTokenInfo {
            name: token.name.clone(),
            id: token.public_part(),
            created_at_unix_ms: token.created_at_ms,
            hosts_joined: self
                .hosts
                .as_ref()
                .map_or(0, |h| h.joined_with(&token.id) as u32),
        }
    }
}
