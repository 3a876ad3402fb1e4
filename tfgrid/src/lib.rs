//! ThreeFold Grid v3 building blocks for ZeroCI's `tfgrid` provisioner:
//!
//! * [`deployment`]: the zos deployment model, its byte-exact challenge hash (what the node
//!   contract and the signatures are bound to), signing and a zos-faithful verifier;
//! * [`identity`]: twin keys from a BIP-39 phrase or hex seed (sr25519/ed25519, SS58, the
//!   secp256k1 key for RMB encryption);
//! * [`rmb`]: the Reliable Message Bus envelope, its signature, the relay token and payload
//!   encryption;
//! * [`chain`]: what deploying needs of TFChain (twins, node contracts), as a trait;
//! * [`proxy`]: the grid proxy's node search;
//! * [`vm`]: a CI VM as one deployment (network + zmachine).
//!
//! Golden vectors made with the published TypeScript SDK (`tests/data/golden.json`) pin the
//! formats; where that SDK and zos (Go) disagree, zos wins, because the node is what verifies.

pub mod chain;
pub mod deployment;
pub mod identity;
pub mod proxy;
pub mod rmb;
pub mod substrate;
mod tls;
pub mod vm;

pub use deployment::{Deployment, Workload, WorkloadData, WorkloadResult};
pub use identity::{Identity, KeyType};
