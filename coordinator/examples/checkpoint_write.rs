//! Checkpoint write throughput into the store against a raw sequential write of the same
//! number of bytes with fsync (`dd ... conv=fsync`) on the same disk, alternating, `--rounds`
//! times. The store side is what an upload costs the coordinator: checksum check and insert
//! of every 2 MiB chunk, the part's completion record, and the commit (a flush of the chunks,
//! then the manifest and a second flush).
//!
//! `cargo run --release -p convoy-coordinator --example checkpoint_write -- DIR [MB] [ROUNDS]`

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use convoy_coordinator::checkpoints::{CheckpointStore, PartKey};
use convoy_coordinator::model::JobId;
use xxhash_rust::xxh3::xxh3_64;

const CHUNK: usize = 2 << 20;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn store_write(dir: &Path, round: u64, data: &[u8]) -> Result<f64, Box<dyn std::error::Error>> {
    let db = sled::open(dir.join(format!("store-{round}")))?;
    let store = CheckpointStore::open(&db)?;
    let chunks: Vec<(&[u8], u64)> = data.chunks(CHUNK).map(|c| (c, xxh3_64(c))).collect();
    let key = PartKey {
        job: JobId(1),
        step: 100,
        generation: 1,
        part: 0,
    };
    let t = Instant::now();
    for (i, (c, sum)) in chunks.iter().enumerate() {
        store.put_chunk(&key, i as u32, c, *sum)?;
    }
    store.finish_part(&key, 0, data.len() as u64, chunks.len() as u32)?;
    let m = store.commit(
        JobId(1),
        100,
        1,
        1,
        data.len() as u64,
        0,
        BTreeMap::new(),
        "bench".into(),
    )?;
    let secs = t.elapsed().as_secs_f64();
    if m.is_none() {
        return Err("the checkpoint did not commit".into());
    }
    Ok(secs)
}

fn dd_write(dir: &Path, mb: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let out = dir.join("dd.bin");
    let t = Instant::now();
    let status = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", out.display()))
        .args([
            "bs=2M",
            &format!("count={}", mb / 2),
            "conv=fsync",
            "status=none",
        ])
        .status()?;
    let secs = t.elapsed().as_secs_f64();
    if !status.success() {
        return Err("dd failed".into());
    }
    std::fs::remove_file(out)?;
    Ok(secs)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let dir = args
        .next()
        .ok_or("usage: checkpoint_write DIR [MB] [ROUNDS]")?;
    let mb: usize = args.next().map_or(Ok(256), |a| a.parse())?;
    let rounds: u64 = args.next().map_or(Ok(3), |a| a.parse())?;
    let dir = Path::new(&dir).join("checkpoint-write-bench");
    std::fs::create_dir_all(&dir)?;
    // Incompressible bytes, like trained weights.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data: Vec<u8> = (0..mb << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let (mut store_s, mut dd_s) = (vec![], vec![]);
    for round in 0..rounds {
        let s = store_write(&dir, round, &data)?;
        let d = dd_write(&dir, mb)?;
        println!(
            "round {}: store {:.0} MB/s, dd conv=fsync {:.0} MB/s",
            round + 1,
            mb as f64 * 1.048_576 / s,
            mb as f64 * 1.048_576 / d
        );
        store_s.push(s);
        dd_s.push(d);
        std::fs::remove_dir_all(dir.join(format!("store-{round}")))?;
    }
    let (s, d) = (median(store_s), median(dd_s));
    println!(
        "{mb} MiB: store median {:.0} MB/s, dd median {:.0} MB/s, store/dd {:.2} (target >= 0.7)",
        mb as f64 * 1.048_576 / s,
        mb as f64 * 1.048_576 / d,
        d / s
    );
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
