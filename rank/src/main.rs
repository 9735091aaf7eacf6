//! `convoy-rank LAUNCH_FILE`: one training rank, started by the worker daemon with the launch
//! file it wrote (see `convoy_service::launch`). Exits 0 when the job's steps are done, 3 when
//! the coordinator says the attempt was superseded, 4 when the job itself is at fault
//! (`EXIT_JOB_ERROR`), 5 when a peer failed (`EXIT_PEER_FAILED`), 1 after any other error
//! (one line on stderr).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use convoy_rank::{EXIT_SUPERSEDED, RankError};
use convoy_service::RankLaunch;

#[derive(Parser)]
#[command(
    name = "convoy-rank",
    version,
    about = "One rank of a convoy job (started by convoy-worker)"
)]
struct Args {
    /// The launch file the worker daemon wrote for this rank.
    launch: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match RankLaunch::read(&args.launch)
        .map_err(RankError::from)
        .and_then(convoy_rank::run)
    {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            match e {
                RankError::Superseded(_) => ExitCode::from(EXIT_SUPERSEDED),
                e if e.is_job_error() => ExitCode::from(convoy_service::EXIT_JOB_ERROR),
                e if e.is_peer_failure() => ExitCode::from(convoy_service::EXIT_PEER_FAILED),
                _ => ExitCode::FAILURE,
            }
        }
    }
}
