//! The small job specs tests train, written into a test's directory with their data.

use std::path::{Path, PathBuf};

use crate::{examples, repo_root};

/// A tiny GPT (2 layers, 2 heads, 16 channels, context 16) on the first 20 kB of
/// Shakespeare, byte tokens, batch 4: a few steps take milliseconds, and every op runs.
pub struct TinyGpt<'a> {
    pub steps: u64,
    /// Extra top-level keys (`world_size = 2`, `grad_accum = 2`, …).
    pub top: &'a str,
    /// Extra keys of `[data]` (`shuffle = true`).
    pub data: &'a str,
    /// The `[optimizer]` and `[schedule]` tables.
    pub training: &'a str,
}

impl Default for TinyGpt<'_> {
    fn default() -> Self {
        TinyGpt {
            steps: 8,
            top: "",
            data: "",
            training: "[optimizer]\nlr = 3e-3\nweight_decay = 0.1\n\
                       [schedule]\nkind = \"cosine\"\nwarmup_steps = 2\n",
        }
    }
}

impl TinyGpt<'_> {
    /// Writes `text.txt` and `job.toml` into `dir`; the spec's path.
    pub fn write(&self, dir: &Path) -> PathBuf {
        write_shakespeare(dir, 20_000);
        let spec = format!(
            "name = \"tiny\"\nsteps = {}\nbatch_size = 4\nseq_len = 16\n{}\n\
             [model]\nkind = \"gpt\"\nn_layer = 2\nn_head = 2\nn_embd = 16\ncontext = 16\n\
             [data]\nkind = \"text\"\nfiles = [\"text.txt\"]\ntokenizer = \"byte\"\n{}\n{}",
            self.steps, self.top, self.data, self.training
        );
        let path = dir.join("job.toml");
        std::fs::write(&path, spec).expect("write spec");
        path
    }
}

/// The first `bytes` of the example Shakespeare as `dir/text.txt`.
pub fn write_shakespeare(dir: &Path, bytes: usize) -> PathBuf {
    let text = std::fs::read_to_string(examples("data/tinyshakespeare.txt")).expect("example data");
    let path = dir.join("text.txt");
    std::fs::write(&path, &text[..bytes.min(text.len())]).expect("write text");
    path
}

/// `examples/digits-mlp.toml` named `name` with `steps` steps and `world_size` ranks, written
/// into `dir` with an absolute data path, for cluster jobs of a chosen length.
pub fn digits(dir: &Path, name: &str, steps: u64, world_size: usize) -> PathBuf {
    let text = std::fs::read_to_string(repo_root().join("examples/digits-mlp.toml"))
        .expect("example spec");
    let data = examples("data/digits.csv.gz")
        .canonicalize()
        .expect("data file");
    let text = text
        .replace(
            "name = \"digits-mlp\"",
            &format!("name = \"{name}\"\nworld_size = {world_size}"),
        )
        .replace("steps = 600", &format!("steps = {steps}"))
        .replace(
            "\"data/digits.csv.gz\"",
            &format!("{:?}", data.display().to_string()),
        );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write spec");
    path
}

/// Writes `spec` (a [`digits`] spec) to `out` with its data path replaced by `value`, a TOML
/// value as it stands in the file (`"\"/data/x.csv\""`, escapes included).
pub fn with_data(spec: &Path, out: &Path, value: &str) {
    let text = std::fs::read_to_string(spec).expect("spec");
    let data = text
        .lines()
        .find_map(|l| l.strip_prefix("path = "))
        .expect("a data path")
        .to_string();
    std::fs::write(out, text.replace(&data, value)).expect("write spec");
}

/// A minimal valid GPT spec whose data file (`x.txt`) is never read: for validation and
/// hashing tests, which only parse.
pub const GPT_TEXT: &str = "name = \"t\"\nsteps = 10\nbatch_size = 4\nseq_len = 8\n\
[model]\nkind = \"gpt\"\nn_layer = 2\nn_head = 2\nn_embd = 16\ncontext = 8\n\
[data]\nkind = \"text\"\nfiles = [\"x.txt\"]\ntokenizer = \"byte\"\n";

/// A minimal valid MLP spec (it names a data file but nothing reads it): for the state
/// machine and scheduler tests, which only need a spec that validates.
pub fn mlp_text(name: &str, world_size: usize, backend: &str) -> String {
    format!(
        "name = \"{name}\"\nsteps = 10\nbatch_size = 4\nworld_size = {world_size}\n\
         backend = \"{backend}\"\n\n[model]\nkind = \"mlp\"\n\n[data]\nkind = \"csv\"\n\
         path = \"data.csv\"\n"
    )
}
