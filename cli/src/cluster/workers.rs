//! `convoy workers`, `convoy cordon`/`uncordon`, `convoy status`.

use anyhow::Result;
use convoy_proto::v1 as pb;
use serde_json::{Value, json};

use crate::cluster::{ago, connect, rpc};
use crate::display::say;

fn worker_json(w: &pb::Worker) -> Value {
    json!({
        "id": w.id, "name": w.name, "slots": w.cpu_slots, "gpus": w.gpus,
        "liveness": w.liveness, "cordoned": w.cordoned,
        "last_heartbeat_ms": w.last_heartbeat_ms, "registered_at_ms": w.registered_at_ms,
        "ranks": w.ranks,
    })
}

pub async fn list(coordinator: &str, json_out: bool) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let workers = c
        .list_workers(pb::ListWorkersRequest {})
        .await
        .map_err(rpc)?
        .into_inner()
        .workers;
    if json_out {
        say!(
            "{}",
            Value::Array(workers.iter().map(worker_json).collect())
        );
        return Ok(());
    }
    say!(
        "{:<10} {:<20} {:>5} {:>4} {:<6} {:<9} {:<10}  RANKS",
        "ID",
        "NAME",
        "SLOTS",
        "GPUS",
        "STATE",
        "CORDONED",
        "HEARD"
    );
    for w in &workers {
        say!(
            "{:<10} {:<20} {:>5} {:>4} {:<6} {:<9} {:<10}  {}",
            w.id,
            w.name,
            w.cpu_slots,
            w.gpus,
            w.liveness,
            if w.cordoned { "yes" } else { "no" },
            ago(w.last_heartbeat_ms),
            w.ranks.join(" ")
        );
    }
    Ok(())
}

pub async fn cordon(coordinator: &str, worker: &str, cordoned: bool, json_out: bool) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let w = c
        .set_cordon(pb::SetCordonRequest {
            worker: worker.into(),
            cordoned,
        })
        .await
        .map_err(rpc)?
        .into_inner();
    if json_out {
        say!("{}", worker_json(&w));
    } else {
        say!(
            "{} ({}) {}",
            w.id,
            w.name,
            if w.cordoned { "cordoned" } else { "uncordoned" }
        );
    }
    Ok(())
}

pub async fn status(coordinator: &str, json_out: bool) -> Result<()> {
    let mut c = connect(coordinator).await?;
    let s = c
        .cluster_status(pb::ClusterStatusRequest {})
        .await
        .map_err(rpc)?
        .into_inner();
    if json_out {
        say!(
            "{}",
            json!({
                "workers_alive": s.workers_alive, "workers_lost": s.workers_lost,
                "slots_total": s.slots_total, "slots_free": s.slots_free,
                "jobs_queued": s.jobs_queued, "jobs_running": s.jobs_running,
            })
        );
    } else {
        say!(
            "workers: {} alive, {} lost\nslots:   {} free of {}\njobs:    {} running, {} queued",
            s.workers_alive,
            s.workers_lost,
            s.slots_free,
            s.slots_total,
            s.jobs_running,
            s.jobs_queued
        );
    }
    Ok(())
}
