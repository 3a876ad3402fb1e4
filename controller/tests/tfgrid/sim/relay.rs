//! The RMB relay: a WebSocket whose URL carries the twin's relay token (checked against its key on
//! the chain), binary frames of protobuf envelopes whose signatures are checked, delivered to the
//! simulated node of the destination twin; the node's reply goes back on the sender's socket.

use std::sync::Arc;

use futures::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use tokio_tungstenite::tungstenite::Message as Frame;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use zeroci_tfgrid::chain::Chain as _;
use zeroci_tfgrid::rmb::{Envelope, jwt, verify_envelope};

use super::node::Nodes;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The twin a token logs in, if the token is valid for it now.
async fn login(nodes: &Nodes, token: &str) -> Option<u32> {
    let claims = jwt::unverified_claims(token).ok()?;
    let twin = nodes.chain.twin(claims.sub).await.ok()??;
    jwt::verify_relay_token(token, &twin.account, now()).ok()?;
    Some(claims.sub)
}

// The handshake callback's error type is tungstenite's own.
#[allow(clippy::result_large_err)]
async fn connection(nodes: Arc<Nodes>, stream: tokio::net::TcpStream) {
    let mut token = String::new();
    let handshake =
        tokio_tungstenite::accept_hdr_async(stream, |request: &Request, response: Response| {
            token = request.uri().query().unwrap_or_default().to_string();
            Ok::<Response, ErrorResponse>(response)
        })
        .await;
    let Ok(socket) = handshake else { return };
    let (mut write, mut read) = socket.split();
    if login(&nodes, &token).await.is_none() {
        // The real relay refuses the upgrade; closing at once is the same to a client.
        let _ = write.send(Frame::Close(None)).await;
        return;
    }
    while let Some(Ok(frame)) = read.next().await {
        let Frame::Binary(bytes) = frame else {
            continue;
        };
        let Ok(envelope) = Envelope::decode(bytes.as_ref()) else {
            continue;
        };
        let Some(source) = envelope.source.as_ref().map(|s| s.twin) else {
            continue;
        };
        let Ok(Some(sender)) = nodes.chain.twin(source).await else {
            continue;
        };
        if verify_envelope(&envelope, &sender.account).is_err() {
            continue; // the relay drops what its sender did not sign
        }
        let destination = envelope.destination.as_ref().map_or(0, |d| d.twin);
        let Some(node) = nodes.by_twin.get(&destination) else {
            continue;
        };
        if let Some(reply) = node.handle(&nodes, envelope, &sender).await
            && write
                .send(Frame::Binary(reply.encode_to_vec().into()))
                .await
                .is_err()
        {
            return;
        }
    }
}

/// Serves on a loopback port; its `ws://` URL and the server task.
pub async fn serve(nodes: Arc<Nodes>) -> (String, tokio::task::AbortHandle) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(connection(nodes.clone(), stream));
        }
    });
    (url, task.abort_handle())
}
