//! `convoy coordinators`: each coordinator replica's own account of itself (role, term,
//! commit and applied index, lag behind the leader, checkpoints held), asked of every address
//! given and every member they name; and the operations on members: transferring
//! leadership, adding and removing members.

use std::time::Duration;

use crate::display::{say, say_err};
use anyhow::{Context, Result};
use convoy_proto::v1 as pb;
use convoy_proto::v1::replicas_client::ReplicasClient;
use serde_json::{Value, json};

/// How long one replica may take to answer before it is listed as unreachable.
const ASK_TIMEOUT: Duration = Duration::from_secs(3);

async fn ask(url: &str) -> Result<pb::ReplicaStatus, String> {
    let channel = super::channel(url).await.map_err(|e| format!("{e:#}"))?;
    let mut c = ReplicasClient::new(channel);
    match tokio::time::timeout(ASK_TIMEOUT, c.status(pb::ReplicaStatusRequest {})).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(convoy_client::one_line(&s)),
        Err(_) => Err(format!("no answer within {} s", ASK_TIMEOUT.as_secs())),
    }
}

/// Asks the leader to hand leadership to replica `to`, and waits until it has.
pub async fn transfer(coordinators: &str, to: u64) -> Result<()> {
    let channel = super::channel(coordinators).await?;
    let mut c = ReplicasClient::new(channel);
    // The first try may reach a replica that does not lead; its answer names the leader,
    // where the channel goes next.
    let mut tries = 0;
    loop {
        tries += 1;
        match c.transfer_leader(pb::TransferLeaderRequest { to }).await {
            Ok(r) => {
                say_err!("coordinator {} leads now (term {})", to, r.get_ref().term);
                return Ok(());
            }
            Err(s) if s.code() == tonic::Code::Unavailable && tries < 5 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => anyhow::bail!("{}", convoy_client::one_line(&s)),
        }
    }
}

/// Asks the leader to add member `spec` (`ID=host:port`) or to remove member `remove`, and
/// waits until the change is applied. An added member is a learner until it has caught up.
pub async fn change(coordinators: &str, add: Option<&str>, remove: Option<u64>) -> Result<()> {
    let request = match (add, remove) {
        (Some(spec), None) => {
            let (id, address) = spec
                .split_once('=')
                .context("--add takes ID=host:port (the new coordinator's id and address)")?;
            let node_id = id
                .trim()
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0)
                .with_context(|| format!("--add {spec}: the id must be a number above 0"))?;
            pb::ChangeMembersRequest {
                node_id,
                address: address.trim().to_string(),
            }
        }
        (None, Some(node_id)) => pb::ChangeMembersRequest {
            node_id,
            address: String::new(),
        },
        _ => anyhow::bail!("give one of --add and --remove"),
    };
    let channel = super::channel(coordinators).await?;
    let mut c = ReplicasClient::new(channel);
    let mut tries = 0;
    loop {
        tries += 1;
        match c.change_members(request.clone()).await {
            Ok(_) if request.address.is_empty() => {
                say_err!("coordinator {} was removed", request.node_id);
                return Ok(());
            }
            Ok(_) => {
                say_err!(
                    "coordinator {} was added as a learner; start it with --join, and it \
                     becomes a voter once it has caught up",
                    request.node_id
                );
                return Ok(());
            }
            Err(s) if s.code() == tonic::Code::Unavailable && tries < 5 => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(s) => anyhow::bail!("{}", convoy_client::one_line(&s)),
        }
    }
}

/// The URLs in a member list as `ReplicaStatus.members` gives it.
fn member_urls(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(',')
        .filter_map(|m| m.split_once('='))
        .map(|(_, url)| url.trim_end_matches("~learner").to_string())
}

pub async fn list(coordinators: &str, json_out: bool) -> Result<()> {
    let mut urls = convoy_client::urls(coordinators)?;
    let mut answers = vec![];
    // Every address given, then every member the answers name (members added since the
    // addresses were written down).
    let mut next = 0;
    while let Some(u) = urls.get(next).cloned() {
        next += 1;
        let answer = ask(&u).await;
        if let Ok(s) = &answer {
            for m in member_urls(&s.members) {
                if !urls.contains(&m) {
                    urls.push(m);
                }
            }
        }
        answers.push((u, answer));
    }
    let leader_commit = answers
        .iter()
        .filter_map(|(_, a)| a.as_ref().ok())
        .filter(|s| s.role == "leader" || s.role == "single")
        .map(|s| s.commit)
        .max();
    let lag = |s: &pb::ReplicaStatus| leader_commit.map(|c| c.saturating_sub(s.applied));
    if json_out {
        let rows: Vec<Value> = answers
            .iter()
            .map(|(url, a)| match a {
                Ok(s) => json!({
                    "address": url, "node_id": s.node_id, "role": s.role, "leader": s.leader,
                    "term": s.term, "commit": s.commit, "applied": s.applied, "lag": lag(s),
                    "serving": s.serving, "members": s.members, "checkpoints": s.checkpoints,
                }),
                Err(e) => json!({"address": url, "error": e}),
            })
            .collect();
        say!("{}", Value::Array(rows));
        return Ok(());
    }
    say!(
        "{:<4} {:<28} {:<10} {:>6} {:>10} {:>10} {:>6} {:>11}",
        "ID",
        "ADDRESS",
        "ROLE",
        "TERM",
        "COMMIT",
        "APPLIED",
        "LAG",
        "CHECKPOINTS"
    );
    for (url, a) in &answers {
        match a {
            Ok(s) => say!(
                "{:<4} {:<28} {:<10} {:>6} {:>10} {:>10} {:>6} {:>11}",
                s.node_id,
                url,
                s.role,
                s.term,
                s.commit,
                s.applied,
                lag(s).map_or("-".into(), |l| l.to_string()),
                s.checkpoints
            ),
            Err(e) => say!("{:<4} {:<28} unreachable: {e}", "-", url),
        }
    }
    Ok(())
}
