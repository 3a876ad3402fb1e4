//! Join tokens in the embedded store: one small file, `join-tokens.json`, replaced atomically on every
//! change and kept in memory.

use std::path::PathBuf;

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{EmbeddedStore, io_err, write_durably};
use crate::provisioner::pool::tokens::JoinToken;
use crate::store::memory::JoinTokens;
use crate::store::{JoinTokenStore, StoreError};

pub(super) struct JoinTokenFile {
    path: PathBuf,
    tokens: Mutex<JoinTokens>,
}

impl JoinTokenFile {
    /// Loads the file when it exists. An unreadable one stops the controller: setting it aside would
    /// silently turn away every joined host.
    pub(super) fn open(path: PathBuf) -> Result<JoinTokenFile, StoreError> {
        let tokens = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StoreError::Corrupt {
                path: path.display().to_string(),
                message: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => JoinTokens::default(),
            Err(e) => return Err(io_err(&path)(e)),
        };
        Ok(JoinTokenFile {
            path,
            tokens: Mutex::new(tokens),
        })
    }

    fn save(&self, tokens: &JoinTokens) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec_pretty(tokens).map_err(|e| StoreError::Corrupt {
            path: self.path.display().to_string(),
            message: e.to_string(),
        })?;
        write_durably(&self.path, &bytes)
    }
}

#[async_trait]
impl JoinTokenStore for EmbeddedStore {
    async fn add_join_token(&self, token: &JoinToken) -> Result<bool, StoreError> {
        let file = &self.join_tokens;
        let mut tokens = file.tokens.lock().await;
        let mut next = tokens.clone();
        if !next.add(token) {
            return Ok(false);
        }
        file.save(&next)?;
        *tokens = next;
        Ok(true)
    }

    async fn join_token(&self, id: &str) -> Result<Option<JoinToken>, StoreError> {
        Ok(self.join_tokens.tokens.lock().await.by_id(id))
    }

    async fn join_tokens(&self) -> Result<Vec<JoinToken>, StoreError> {
        Ok(self.join_tokens.tokens.lock().await.all())
    }

    async fn remove_join_token(&self, name: &str) -> Result<Option<JoinToken>, StoreError> {
        let file = &self.join_tokens;
        let mut tokens = file.tokens.lock().await;
        let mut next = tokens.clone();
        let removed = next.remove(name);
        if removed.is_some() {
            file.save(&next)?;
            *tokens = next;
        }
        Ok(removed)
    }
}
