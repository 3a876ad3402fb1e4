//! `zeroci agents` and `zeroci agents token create|list|revoke`.

use std::path::Path;
use std::process::ExitCode;

use serde_json::json;
use zeroci::pb;

use crate::args::{AgentsArgs, AgentsCommand, TokenCommand};
use crate::display::{print_json, write_stdout};
use crate::render::{agent_json, agents_table, pool_host_json, pool_hosts_table, timestamp_json};

pub async fn agents(profile: Option<&Path>, args: AgentsArgs) -> anyhow::Result<ExitCode> {
    if let Some(AgentsCommand::Token { command }) = args.command {
        return token(profile, command).await;
    }
    let mut client = super::connect(profile).await?;
    let response = client.rpc.list_agents(pb::ListAgentsRequest {}).await;
    let listed = response.map_err(|s| client.rpc_error(&s))?.into_inner();
    if args.json {
        print_json(&json!({
            "agents": listed.agents.iter().map(agent_json).collect::<Vec<_>>(),
            "pool_hosts": listed.pool_hosts.iter().map(pool_host_json).collect::<Vec<_>>(),
        }))?;
    } else {
        let now = zeroci::now_unix_ms();
        let mut out = agents_table(&listed.agents, now);
        if !listed.pool_hosts.is_empty() {
            out.push('\n');
            out.push_str(&pool_hosts_table(&listed.pool_hosts, now));
        }
        write_stdout(out.as_bytes())?;
    }
    Ok(ExitCode::SUCCESS)
}

fn token_json(info: &pb::JoinTokenInfo) -> serde_json::Value {
    json!({
        "name": info.name,
        "id": info.id,
        "created_at": timestamp_json(info.created_at_unix_ms),
        "hosts_joined": info.hosts_joined,
    })
}

async fn token(profile: Option<&Path>, command: TokenCommand) -> anyhow::Result<ExitCode> {
    let mut client = super::connect(profile).await?;
    match command {
        TokenCommand::Create {
            name,
            write_ca,
            json,
        } => {
            let response = client
                .rpc
                .create_join_token(pb::CreateJoinTokenRequest { name })
                .await;
            let created = response.map_err(|s| client.rpc_error(&s))?.into_inner();
            if let Some(path) = &write_ca {
                std::fs::write(path, &created.ca_pem).map_err(|e| {
                    anyhow::anyhow!("cannot write the CA certificate to {}: {e}", path.display())
                })?;
            }
            let info = created.info.unwrap_or_default();
            if json {
                let mut shown = token_json(&info);
                shown["token"] = created.token.clone().into();
                print_json(&shown)?;
            } else {
                let ca = write_ca
                    .as_ref()
                    .map_or("ca.pem".to_string(), |p| p.display().to_string());
                let out = format!(
                    "join token {name} (shown once; the controller keeps only its hash):\n  {token}\n\
                     join a host with:\n  ZEROCI_JOIN_TOKEN={token} zeroci-agent join --controller {controller} --ca {ca} [--labels a,b] [--capacity N]\n",
                    name = info.name,
                    token = created.token,
                    controller = client.controller,
                );
                write_stdout(out.as_bytes())?;
            }
        }
        TokenCommand::List { json } => {
            let response = client
                .rpc
                .list_join_tokens(pb::ListJoinTokensRequest {})
                .await;
            let tokens = response
                .map_err(|s| client.rpc_error(&s))?
                .into_inner()
                .tokens;
            if json {
                print_json(&serde_json::Value::Array(
                    tokens.iter().map(token_json).collect(),
                ))?;
            } else if tokens.is_empty() {
                write_stdout(b"no join tokens\n")?;
            } else {
                let now = zeroci::now_unix_ms();
                let rows: Vec<Vec<String>> = tokens
                    .iter()
                    .map(|t| {
                        vec![
                            t.name.clone(),
                            t.id.clone(),
                            crate::render::format_relative(t.created_at_unix_ms, now),
                            t.hosts_joined.to_string(),
                        ]
                    })
                    .collect();
                let out = crate::render::table(&["NAME", "ID", "CREATED", "HOSTS"], &rows);
                write_stdout(out.as_bytes())?;
            }
        }
        TokenCommand::Revoke { name } => {
            let response = client
                .rpc
                .revoke_join_token(pb::RevokeJoinTokenRequest { name })
                .await;
            let info = response.map_err(|s| client.rpc_error(&s))?.into_inner();
            let out = format!(
                "join token {} revoked; {} host(s) joined with it were dropped\n",
                info.name, info.hosts_joined
            );
            write_stdout(out.as_bytes())?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
