//! `zeroci agents`.

use std::path::Path;
use std::process::ExitCode;

use zeroci::pb;

use crate::args::AgentsArgs;
use crate::display::{print_json, write_stdout};
use crate::render::{agent_json, agents_table};

pub async fn agents(profile: Option<&Path>, args: AgentsArgs) -> anyhow::Result<ExitCode> {
    let mut client = super::connect(profile).await?;
    let response = client.rpc.list_agents(pb::ListAgentsRequest {}).await;
    let agents = response
        .map_err(|s| client.rpc_error(&s))?
        .into_inner()
        .agents;
    if args.json {
        print_json(&serde_json::Value::Array(
            agents.iter().map(agent_json).collect(),
        ))?;
    } else {
        write_stdout(agents_table(&agents, zeroci::now_unix_ms()).as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}
