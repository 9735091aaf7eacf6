//! Checkpoint write throughput into the store against a raw sequential write of the same
//! number of bytes with fsync (`dd ... conv=fsync`) on the same disk, alternating, `--rounds`
//! times. The store side is what an upload costs the coordinator: checksum check and write
//! of every 2 MiB chunk file, the part's completion record, and the commit (the chunk files
//! synced, then the manifest and a flush of the index).
//!
//! `cargo run --release -p convoy-coordinator --example checkpoint_write -- DIR [MB] [ROUNDS]`
//!
//! With `--retention DIR`, it measures disk use instead: 3 jobs × 120 checkpoints of 1.4 MB
//! with `keep_last = 3` (retention applied after each commit, as the coordinator does), then
//! the store's disk use against the live checkpoint bytes, before and after a reopen.

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
    let store = CheckpointStore::open_dir(&dir.join(format!("store-{round}")))?;
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

/// `len` incompressible bytes, like trained weights (xorshift from `x`).
fn incompressible(len: usize, x: &mut u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            *x as u8
        })
        .collect()
}

/// Bytes the files under `path` occupy on disk (allocated blocks, as `du` counts).
fn disk_use(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    for e in std::fs::read_dir(path)? {
        let e = e?;
        let meta = e.metadata()?;
        total += if meta.is_dir() {
            disk_use(&e.path())?
        } else {
            meta.blocks() * 512
        };
    }
    Ok(total)
}

fn retention(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    use convoy_coordinator::checkpoints::Retention;
    let dir = dir.join("checkpoint-retention-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let keep = Retention {
        keep_last: 3,
        keep_best: 0,
        best_metric: "val_loss".into(),
        minimize: true,
    };
    let len = 1_400_000usize;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let live = |store: &CheckpointStore| -> Result<u64, Box<dyn std::error::Error>> {
        let mut bytes = 0;
        for job in 1..=3 {
            bytes += store
                .list(JobId(job))?
                .iter()
                .map(|m| m.total_len)
                .sum::<u64>();
        }
        Ok(bytes)
    };
    {
        let store = CheckpointStore::open_dir(&dir.join("store"))?;
        for step in 1..=120u64 {
            for job in 1..=3 {
                let data = incompressible(len, &mut x);
                let key = PartKey {
                    job: JobId(job),
                    step,
                    generation: 1,
                    part: 0,
                };
                store.put_chunk(&key, 0, &data, xxh3_64(&data))?;
                store.finish_part(&key, 0, len as u64, 1)?;
                store
                    .commit(
                        JobId(job),
                        step,
                        1,
                        1,
                        len as u64,
                        0,
                        BTreeMap::new(),
                        "bench".into(),
                    )?
                    .ok_or("the checkpoint did not commit")?;
                store.apply_retention(JobId(job), &keep)?;
            }
        }
        let (l, d) = (live(&store)?, disk_use(&dir)?);
        println!(
            "after 360 checkpoints: live {:.1} MB, disk {:.1} MB ({:.2}x)",
            l as f64 / 1e6,
            d as f64 / 1e6,
            d as f64 / l as f64
        );
    }
    let store = CheckpointStore::open_dir(&dir.join("store"))?;
    let (l, d) = (live(&store)?, disk_use(&dir)?);
    println!(
        "after a reopen: live {:.1} MB, disk {:.1} MB ({:.2}x)",
        l as f64 / 1e6,
        d as f64 / 1e6,
        d as f64 / l as f64
    );
    drop(store);
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--retention") {
        args.next();
        let dir = args
            .next()
            .ok_or("usage: checkpoint_write --retention DIR")?;
        return retention(Path::new(&dir));
    }
    let dir = args
        .next()
        .ok_or("usage: checkpoint_write DIR [MB] [ROUNDS]")?;
    let mb: usize = args.next().map_or(Ok(256), |a| a.parse())?;
    let rounds: u64 = args.next().map_or(Ok(3), |a| a.parse())?;
    let dir = Path::new(&dir).join("checkpoint-write-bench");
    std::fs::create_dir_all(&dir)?;
    // Incompressible bytes, like trained weights.
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let data = incompressible(mb << 20, &mut x);
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
