//! Bus bandwidth of the ring all-reduce on loopback, one process per rank (comparable with
//! `bench/allreduce_gloo.py`, which runs PyTorch's Gloo backend the same way).
//!
//! ```text
//! cargo run --release -p convoy-collective --example allreduce_bench -- [--worlds 2,4] [--sizes-mb 4,64,256] [--iters N]
//! ```
//!
//! The parent re-executes itself once per rank with `--rank`; each rank binds 127.0.0.1:0,
//! prints `PORT p`, reads `ADDRS a,b,…` on stdin, forms the ring and all-reduces (sum) an f32
//! buffer: 2 warm-up iterations, then `N` timed ones, each after a barrier. Rank 0 prints the
//! median time. busbw = 2(n−1)/n · bytes / time, bytes = MiB · 2²⁰.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use convoy_collective::{ReduceOp, Ring, RingConfig};

type Error = Box<dyn std::error::Error>;

struct Args {
    rank: Option<usize>,
    worlds: Vec<usize>,
    sizes_mb: Vec<usize>,
    iters: Option<usize>,
}

fn parse() -> Result<Args, Error> {
    let mut a = Args {
        rank: None,
        worlds: vec![2, 4],
        sizes_mb: vec![4, 64, 256],
        iters: None,
    };
    let list = |v: &str| -> Result<Vec<usize>, Error> {
        v.split(',')
            .map(|x| x.trim().parse().map_err(Error::from))
            .collect()
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--rank" => a.rank = Some(value.parse()?),
            "--worlds" | "--world" => a.worlds = list(&value)?,
            "--sizes-mb" | "--mb" => a.sizes_mb = list(&value)?,
            "--iters" => a.iters = Some(value.parse()?),
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    Ok(a)
}

/// Fewer timed iterations for bigger buffers keep each configuration to a few seconds.
fn default_iters(mb: usize) -> usize {
    match mb {
        0..=8 => 30,
        9..=64 => 10,
        _ => 5,
    }
}

fn main() -> Result<(), Error> {
    let args = parse()?;
    if let Some(rank) = args.rank {
        return rank_main(rank, args.worlds[0], args.sizes_mb[0], args.iters);
    }
    println!("| impl | ranks | size (MiB) | median time (ms) | busbw (GB/s) |");
    println!("|---|---|---|---|---|");
    for &world in &args.worlds {
        for &mb in &args.sizes_mb {
            let median_s = run_config(world, mb, args.iters)?;
            let bytes = (mb << 20) as f64;
            let busbw = 2.0 * (world as f64 - 1.0) / world as f64 * bytes / median_s / 1e9;
            println!(
                "| convoy ring | {world} | {mb} | {:.2} | {busbw:.3} |",
                median_s * 1e3
            );
        }
    }
    Ok(())
}

/// Starts one process per rank, introduces them, and returns rank 0's median time.
fn run_config(world: usize, mb: usize, iters: Option<usize>) -> Result<f64, Error> {
    let exe = std::env::current_exe()?;
    let mut children = Vec::new();
    for rank in 0..world {
        let mut cmd = Command::new(&exe);
        cmd.args(["--rank", &rank.to_string()])
            .args(["--world", &world.to_string()])
            .args(["--mb", &mb.to_string()]);
        if let Some(n) = iters {
            cmd.args(["--iters", &n.to_string()]);
        }
        let child = cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).spawn()?;
        children.push(child);
    }
    let mut readers = Vec::new();
    let mut addrs = Vec::new();
    for c in &mut children {
        let mut r = BufReader::new(c.stdout.take().ok_or("no child stdout")?);
        let mut line = String::new();
        r.read_line(&mut line)?;
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .ok_or(format!("unexpected child output {line:?}"))?;
        addrs.push(format!("127.0.0.1:{port}"));
        readers.push(r);
    }
    let addrs = addrs.join(",");
    for c in &mut children {
        let stdin = c.stdin.as_mut().ok_or("no child stdin")?;
        writeln!(stdin, "ADDRS {addrs}")?;
    }
    let mut line = String::new();
    readers[0].read_line(&mut line)?;
    for mut c in children {
        let status = c.wait()?;
        if !status.success() {
            return Err(format!("a rank exited with {status}").into());
        }
    }
    let median = line
        .trim()
        .strip_prefix("RESULT ")
        .ok_or(format!("unexpected rank 0 output {line:?}"))?;
    Ok(median.parse()?)
}

fn rank_main(rank: usize, world: usize, mb: usize, iters: Option<usize>) -> Result<(), Error> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("PORT {}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let addrs: Vec<SocketAddr> = line
        .trim()
        .strip_prefix("ADDRS ")
        .ok_or("expected ADDRS")?
        .split(',')
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let cfg = RingConfig {
        rank,
        world,
        addrs,
        generation: 1,
        timeout: Duration::from_secs(60),
        secret: b"allreduce bench".to_vec(),
    };
    let mut ring = Ring::connect(cfg, listener)?;
    let mut buf = vec![1.0f32 + rank as f32; (mb << 20) / 4];
    let mut token = [0.0f32];
    let iters = iters.unwrap_or_else(|| default_iters(mb));
    let mut times = Vec::with_capacity(iters);
    for i in 0..2 + iters {
        ring.all_reduce(&mut token, ReduceOp::Sum)?;
        let t = Instant::now();
        ring.all_reduce(&mut buf, ReduceOp::Sum)?;
        if i >= 2 {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    if rank == 0 {
        println!("RESULT {}", times[times.len() / 2]);
    }
    Ok(())
}
