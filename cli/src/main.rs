//! `convoy`: the command line. A thin clap wrapper: every command calls into a library.

mod data;
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
    let result = match cli.command {
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
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
