//! Join tokens in MongoDB: collection `join_tokens`, `_id` the token's name (so names are unique by
//! the server's own rule), `id` indexed for the lookup a joining host needs.

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{Document, doc};

use super::{MongoStore, backend, corrupt, is_duplicate};
use crate::provisioner::pool::tokens::JoinToken;
use crate::store::{JoinTokenStore, StoreError};

fn token_of(document: &Document) -> Result<JoinToken, StoreError> {
    let record = document
        .get_document("record")
        .map_err(|e| corrupt("join_tokens", e))?;
    mongodb::bson::from_document(record.clone()).map_err(|e| corrupt("join_tokens", e))
}

#[async_trait]
impl JoinTokenStore for MongoStore {
    async fn add_join_token(&self, token: &JoinToken) -> Result<bool, StoreError> {
        let record = mongodb::bson::to_document(token)
            .map_err(|e| corrupt(format!("join token {:?}", token.name), e))?;
        let document = doc! {"_id": &token.name, "id": &token.id, "record": record};
        match self.join_tokens.insert_one(document).await {
            Ok(_) => Ok(true),
            Err(e) if is_duplicate(&e) => Ok(false),
            Err(e) => Err(backend(e)),
        }
    }

    async fn join_token(&self, id: &str) -> Result<Option<JoinToken>, StoreError> {
        self.join_tokens
            .find_one(doc! {"id": id})
            .await
            .map_err(backend)?
            .as_ref()
            .map(token_of)
            .transpose()
    }

    async fn join_tokens(&self) -> Result<Vec<JoinToken>, StoreError> {
        let documents: Vec<Document> = self
            .join_tokens
            .find(doc! {})
            .sort(doc! {"_id": 1})
            .await
            .map_err(backend)?
            .try_collect()
            .await
            .map_err(backend)?;
        documents.iter().map(token_of).collect()
    }

    async fn remove_join_token(&self, name: &str) -> Result<Option<JoinToken>, StoreError> {
        self.join_tokens
            .find_one_and_delete(doc! {"_id": name})
            .await
            .map_err(backend)?
            .as_ref()
            .map(token_of)
            .transpose()
    }
}
