//! `convoy`: the command line. A thin clap wrapper: every command calls into a library.

mod cluster;
mod data;
mod display;
mod train;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "convoy",
    version,
    about = "Data-parallel training on your own machines"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// The coordinator's address, or the replicas' separated by commas (cluster commands
    /// follow the leader among them). Cluster commands present the token in CONVOY_TOKEN, or
    /// in the file CONVOY_TOKEN_FILE names, or in ~/.config/convoy/token (mode 0600).
    #[arg(long, global = true, env = "CONVOY_COORDINATOR", default_value = convoy_client::DEFAULT_ADDRESS)]
    coordinator: String,
    /// The cluster's CA certificate (PEM): cluster commands then connect over TLS and trust
    /// it (an `https://` address without one trusts the system's roots).
    #[arg(long, global = true, env = "CONVOY_TLS_CA")]
    tls_ca: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a job in this process, with the same engine a worker rank runs.
    Train(train::TrainArgs),
    /// Dataset tools.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Submit a job to the cluster.
    Submit(cluster::submit::SubmitArgs),
    /// List jobs (everyone's, with their owners).
    Jobs {
        /// Only this user's jobs.
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Who the token you present belongs to.
    Whoami {
        #[arg(long)]
        json: bool,
    },
    /// Administration: people's API tokens.
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// A cluster's TLS certificates.
    Tls {
        #[command(subcommand)]
        command: TlsCommand,
    },
    /// One job in detail.
    Job {
        #[command(subcommand)]
        command: JobCommand,
    },
    /// A job's output: every rank's stdout/stderr and convoy's events.
    Logs {
        job: String,
        /// Keep printing new lines until the job ends.
        #[arg(long, short)]
        follow: bool,
        /// Only this rank's lines.
        #[arg(long)]
        rank: Option<u32>,
        #[arg(long)]
        json: bool,
    },
    /// Cancel a job (its ranks get SIGTERM, then SIGKILL after the grace period).
    Cancel {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// List the coordinator replicas (every address in --coordinator, and every member they
    /// name): role, term, commit and applied index, how far each lags behind the leader, and
    /// the checkpoints each holds.
    Coordinators {
        /// First hand leadership to this replica (by node id), e.g. before maintenance of
        /// the leader.
        #[arg(long)]
        transfer_to: Option<u64>,
        /// First add a member, `ID=host:port`: it joins as a learner (start it with --join)
        /// and becomes a voter once it has caught up.
        #[arg(long, value_name = "ID=HOST:PORT", conflicts_with = "remove")]
        add: Option<String>,
        /// First remove the member with this node id (not the leader: transfer first).
        #[arg(long, value_name = "ID")]
        remove: Option<u64>,
        #[arg(long)]
        json: bool,
    },
    /// List worker daemons.
    Workers {
        #[arg(long)]
        json: bool,
    },
    /// Give a worker no new ranks (running ones continue).
    Cordon {
        /// Worker id (worker-3) or name.
        worker: String,
        #[arg(long)]
        json: bool,
    },
    /// Let a cordoned worker take ranks again.
    Uncordon {
        worker: String,
        #[arg(long)]
        json: bool,
    },
    /// The cluster at a glance.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Start a local cluster (a coordinator and N workers) and optionally run a job on it.
    Dev(cluster::dev::DevArgs),
    /// A job's checkpoints: step, when, size, metrics.
    Checkpoints {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Export or verify one checkpoint.
    Checkpoint {
        #[command(subcommand)]
        command: CheckpointCommand,
    },
    /// Queue a failed or cancelled job again; it continues from its latest checkpoint.
    Resume {
        job: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum TlsCommand {
    /// Make a cluster's CA and the coordinators' and workers' certificates in a directory
    /// (ca.pem, coordinator.pem/.key, worker.pem/.key; keys mode 0600).
    Init {
        /// The directory (created if missing; an existing CA there is never replaced).
        #[arg(long, short)]
        out: PathBuf,
        /// A name or IP address clients reach a coordinator at (repeat for each; localhost
        /// and 127.0.0.1 are always included).
        #[arg(long = "host")]
        hosts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// API tokens: who may call the coordinator (administrators only).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token for a user; it is printed once, on stdout.
    Create {
        #[arg(long)]
        user: String,
        /// The user may act on every job, the workers, the coordinators and tokens.
        #[arg(long)]
        admin: bool,
        /// The token stops working after this long (e.g. 90d, 12h); default: never.
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Every token: id, user, whether administrator, created, expiry (never the secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token at once, by id.
    Revoke {
        id: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum CheckpointCommand {
    /// Write a checkpoint's weights to a file (JOB or JOB@STEP; the latest without a step).
    Export {
        checkpoint: String,
        /// llmc (llm.c's fp32 GPT-2 file) or safetensors
        #[arg(long, default_value = "safetensors")]
        format: String,
        #[arg(short, long)]
        output: PathBuf,
    },
    /// Read every chunk of a checkpoint and check its checksum (JOB or JOB@STEP).
    Verify {
        checkpoint: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum JobCommand {
    /// State, progress, attempts and their placements.
    Show {
        job: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a finished job: its entry, logs, metrics and checkpoints. Its id is never
    /// reused.
    Delete {
        job: String,
        /// Keep its checkpoints (for export and `init_from = "job:ID"`).
        #[arg(long)]
        keep_checkpoints: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Tokenize text files into llm.c train/val token shards.
    Prepare {
        /// byte or gpt2
        #[arg(long, default_value = "byte")]
        tokenizer: String,
        /// Share of each file's tokens written to the validation shards.
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
        /// Tokens per shard file.
        #[arg(long, default_value_t = 100_000_000)]
        shard_tokens: usize,
        /// Output directory (created if missing).
        #[arg(short, long)]
        output: PathBuf,
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let addr = cli.coordinator.as_str();
    if let Err(e) = convoy_client::tls::configure(&convoy_client::tls::TlsSettings {
        ca: cli.tls_ca.clone(),
        identity: None,
    }) {
        display::say_err!("error: {e}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Tls {
            command: TlsCommand::Init { out, hosts },
        } => cluster::tls::init(&out, &hosts).map(|pki| {
            display::say_err!(
                "made a CA and certificates in {}: serve with --tls-cert {} --tls-key {} \
                 --tls-ca {}; clients trust CONVOY_TLS_CA={}",
                out.display(),
                pki.coordinator_cert.display(),
                pki.coordinator_key.display(),
                pki.ca.display(),
                pki.ca.display()
            );
        }),
        Command::Submit(args) => block_on(cluster::submit::run(addr, args)),
        Command::Jobs { user, json } => block_on(cluster::jobs::list(addr, user, json)),
        Command::Whoami { json } => block_on(cluster::admin::whoami(addr, json)),
        Command::Admin {
            command: AdminCommand::Token { command },
        } => block_on(async {
            match command {
                TokenCommand::Create {
                    user,
                    admin,
                    expires,
                    json,
                } => cluster::admin::create(addr, &user, admin, expires.as_deref(), json).await,
                TokenCommand::List { json } => cluster::admin::list(addr, json).await,
                TokenCommand::Revoke { id, json } => cluster::admin::revoke(addr, &id, json).await,
            }
        }),
        Command::Job {
            command: JobCommand::Show { job, json },
        } => block_on(cluster::jobs::show(addr, &job, json)),
        Command::Job {
            command:
                JobCommand::Delete {
                    job,
                    keep_checkpoints,
                    json,
                },
        } => block_on(cluster::jobs::delete(addr, &job, keep_checkpoints, json)),
        Command::Logs {
            job,
            follow,
            rank,
            json,
        } => block_on(cluster::jobs::logs(addr, &job, follow, rank, json)),
        Command::Cancel { job, json } => block_on(cluster::jobs::cancel(addr, &job, json)),
        Command::Workers { json } => block_on(cluster::workers::list(addr, json)),
        Command::Coordinators {
            transfer_to,
            add,
            remove,
            json,
        } => block_on(async {
            if let Some(to) = transfer_to {
                cluster::coordinators::transfer(addr, to).await?;
            }
            if add.is_some() || remove.is_some() {
                cluster::coordinators::change(addr, add.as_deref(), remove).await?;
            }
            cluster::coordinators::list(addr, json).await
        }),
        Command::Cordon { worker, json } => {
            block_on(cluster::workers::cordon(addr, &worker, true, json))
        }
        Command::Uncordon { worker, json } => {
            block_on(cluster::workers::cordon(addr, &worker, false, json))
        }
        Command::Status { json } => block_on(cluster::workers::status(addr, json)),
        Command::Dev(args) => block_on(cluster::dev::run(args)),
        Command::Checkpoints { job, json } => {
            block_on(cluster::checkpoints::list(addr, &job, json))
        }
        Command::Checkpoint {
            command:
                CheckpointCommand::Export {
                    checkpoint,
                    format,
                    output,
                },
        } => block_on(cluster::checkpoints::export_to(
            addr,
            &checkpoint,
            &format,
            &output,
        )),
        Command::Checkpoint {
            command: CheckpointCommand::Verify { checkpoint, json },
        } => block_on(cluster::checkpoints::verify(addr, &checkpoint, json)),
        Command::Resume { job, json } => block_on(cluster::checkpoints::resume(addr, &job, json)),
        Command::Train(args) => train::run(args),
        Command::Data {
            command:
                DataCommand::Prepare {
                    tokenizer,
                    val_fraction,
                    shard_tokens,
                    output,
                    inputs,
                },
        } => data::prepare(&tokenizer, val_fraction, shard_tokens, &output, &inputs),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            display::say_err!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a cluster command on a small runtime (the local commands need none).
fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("starting the async runtime: {e}"))?
        .block_on(f)
}
