//! The grid proxy (`https://gridproxy.grid.tf/`): a read-only indexer of the chain and the nodes,
//! asked which nodes of a farm are up with room for a VM. Its numbers lag (seconds to minutes), so a
//! node it offers may still refuse; the provisioner then tries the next.

use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("grid proxy {url}: {message}")]
    Request { url: String, message: String },
    #[error("grid proxy {url} answered {status}: {body}")]
    Status {
        url: String,
        status: u16,
        body: String,
    },
}

/// Capacity in the proxy's units: CPU cores, and bytes of SSD, HDD and memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Capacity {
    #[serde(default)]
    pub cru: u64,
    #[serde(default)]
    pub sru: u64,
    #[serde(default)]
    pub hru: u64,
    #[serde(default)]
    pub mru: u64,
}

/// A node as `GET /nodes` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Node {
    pub node_id: u32,
    pub farm_id: u32,
    /// The node's twin: where RMB messages for it go.
    pub twin_id: u32,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub healthy: bool,
    #[serde(default, rename = "total_resources")]
    pub total: Capacity,
    #[serde(default, rename = "used_resources")]
    pub used: Capacity,
    #[serde(default)]
    pub features: Vec<String>,
    #[serde(default)]
    pub rented: bool,
}

impl Node {
    /// Free memory and SSD in bytes, by the proxy's (lagging) count.
    pub fn free(&self) -> (u64, u64) {
        (
            self.total.mru.saturating_sub(self.used.mru),
            self.total.sru.saturating_sub(self.used.sru),
        )
    }
}

/// What a VM needs of a node.
#[derive(Debug, Clone, Default)]
pub struct NodeQuery {
    pub farm_id: u32,
    pub memory_bytes: u64,
    pub ssd_bytes: u64,
    /// Workload types the node must support (`zmachine`, `network`).
    pub features: Vec<String>,
    /// Our twin: nodes rented by someone else are left out.
    pub twin_id: u32,
    /// Nodes not to offer (tried already).
    pub excluded: Vec<u32>,
}

pub struct GridProxy {
    base: String,
    http: reqwest::Client,
}

/// One proxy request's bound.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

impl GridProxy {
    pub fn new(base: &str) -> Result<GridProxy, ProxyError> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| ProxyError::Request {
                url: base.to_string(),
                message: e.to_string(),
            })?;
        Ok(GridProxy {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// Nodes that are up and healthy in the farm, with the room and features asked for, most free
    /// memory first.
    pub async fn nodes(&self, query: &NodeQuery) -> Result<Vec<Node>, ProxyError> {
        let mut params = vec![
            ("farm_ids", query.farm_id.to_string()),
            ("status", "up".to_string()),
            ("healthy", "true".to_string()),
            ("free_mru", query.memory_bytes.to_string()),
            ("free_sru", query.ssd_bytes.to_string()),
            ("rented", "false".to_string()),
            ("available_for", query.twin_id.to_string()),
            ("size", "50".to_string()),
        ];
        if !query.features.is_empty() {
            params.push(("features", query.features.join(",")));
        }
        if !query.excluded.is_empty() {
            let excluded: Vec<String> = query.excluded.iter().map(u32::to_string).collect();
            params.push(("excluded", excluded.join(",")));
        }
        let url = format!("{}/nodes", self.base);
        let failed = |message: String| ProxyError::Request {
            url: url.clone(),
            message,
        };
        let response = self
            .http
            .get(&url)
            .query(&params)
            .send()
            .await
            .map_err(|e| failed(e.to_string()))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(ProxyError::Status {
                url,
                status: status.as_u16(),
                body: body.chars().take(300).collect(),
            });
        }
        let mut nodes: Vec<Node> = response.json().await.map_err(|e| failed(e.to_string()))?;
        // The proxy's filters are trusted for nothing that decides where money is spent.
        nodes.retain(|n| {
            let (memory, ssd) = n.free();
            n.farm_id == query.farm_id
                && n.status == "up"
                && memory >= query.memory_bytes
                && ssd >= query.ssd_bytes
                && query.features.iter().all(|f| n.features.contains(f))
                && !query.excluded.contains(&n.node_id)
        });
        nodes.sort_by_key(|n| std::cmp::Reverse(n.free().0));
        Ok(nodes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_reads_from_the_proxy_json() {
        let json = r#"[{"id":"1-7","nodeId":7,"farmId":1,"twinId":29,"status":"up","healthy":true,
            "total_resources":{"cru":8,"sru":512000000000,"hru":0,"mru":17179869184},
            "used_resources":{"cru":2,"sru":100000000000,"hru":0,"mru":4294967296},
            "features":["zmachine","network","zmount"],"rented":false,"rentable":true,
            "publicConfig":{"ipv4":"","ipv6":"","gw4":"","gw6":"","domain":""}}]"#;
        let nodes: Vec<Node> = serde_json::from_str(json).unwrap();
        assert_eq!(nodes[0].node_id, 7);
        assert_eq!(nodes[0].twin_id, 29);
        assert_eq!(nodes[0].free(), (12884901888, 412000000000));
        assert!(nodes[0].features.iter().any(|f| f == "zmachine"));
    }
}
