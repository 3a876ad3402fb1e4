//! The grid proxy's `GET /nodes`: the simulated nodes, filtered by farm and status as the client asks.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::get;
use serde_json::{Value, json};

use super::node::Nodes;

async fn list_nodes(
    State(nodes): State<Arc<Nodes>>,
    Query(query): Query<HashMap<String, String>>,
) -> ([(axum::http::header::HeaderName, &'static str); 1], String) {
    let farms: Vec<u32> = query
        .get("farm_ids")
        .map(|f| f.split(',').filter_map(|id| id.parse().ok()).collect())
        .unwrap_or_default();
    let listed: Vec<Value> = nodes
        .by_twin
        .values()
        .filter(|_| farms.is_empty() || farms.contains(&1))
        .map(|node| {
            json!({
                "id": format!("1-{}", node.node_id),
                "nodeId": node.node_id,
                "farmId": 1,
                "twinId": node.twin,
                "status": "up",
                "healthy": true,
                "total_resources": {"cru": 8, "sru": 512u64 << 30, "hru": 0, "mru": 16u64 << 30},
                "used_resources": {"cru": 0, "sru": 0, "hru": 0, "mru": 0},
                "features": ["zmachine", "network", "zmount", "ip"],
                "rented": false,
                "rentable": true,
            })
        })
        .collect();
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        Value::Array(listed).to_string(),
    )
}

/// Serves on a loopback port; its URL and the server task.
pub async fn serve(nodes: Arc<Nodes>) -> (String, tokio::task::AbortHandle) {
    let app = axum::Router::new()
        .route("/nodes", get(list_nodes))
        .with_state(nodes);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, task.abort_handle())
}
