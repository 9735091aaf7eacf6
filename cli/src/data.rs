//! `convoy data prepare`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use convoy_engine::data::prepare::{PrepareOptions, prepare as prepare_shards};
use convoy_engine::data::tokenizer::TokenizerKind;
use indicatif::{ProgressBar, ProgressStyle};

pub fn prepare(
    tokenizer: &str,
    val_fraction: f64,
    shard_tokens: usize,
    output: &Path,
    inputs: &[PathBuf],
) -> Result<()> {
    let tokenizer = match tokenizer {
        "byte" => TokenizerKind::Byte,
        "gpt2" => TokenizerKind::Gpt2,
        other => bail!("--tokenizer {other}: expected byte or gpt2"),
    };
    if shard_tokens == 0 {
        bail!("--shard-tokens 0: a shard needs at least one token");
    }
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "{spinner} tokenizing [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
        )
        .expect("a valid progress template")
        .progress_chars("=> "),
    );
    let opts = PrepareOptions {
        tokenizer,
        val_fraction,
        shard_tokens,
    };
    let report = prepare_shards(inputs, output, &opts, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    });
    bar.finish_and_clear();
    let report = report?;
    println!(
        "wrote {} train tokens in {} shard(s) and {} val tokens in {} shard(s) to {}",
        report.train_tokens,
        report.train_shards.len(),
        report.val_tokens,
        report.val_shards.len(),
        output.display()
    );
    Ok(())
}
