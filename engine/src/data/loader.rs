//! Token batches from llm.c shards (or in-memory token streams), with exactly the semantics of
//! llm.c's `DataLoader`, so runs can be compared token for token with llm.c.
//!
//! Let `G = world·B·T` (one global batch). A source of `len` tokens holds
//! `samples = (len - 1) / G` global batches; global batch `i` covers tokens `[i·G, i·G + G + 1)`
//! and rank `r` reads `[i·G + r·B·T, i·G + r·B·T + B·T + 1)`: the first `B·T` are the inputs, the
//! same shifted by one the targets. Sources are visited in turn; after the last one the loader
//! wraps to the first and the epoch increases.
//!
//! With shuffling, the order of sources and the order of samples within each source are
//! permutations that depend only on `(seed, epoch)` (and the source's index), so every rank
//! computes the same global batch without communicating and a resumed run reproduces the order.
//! See [`permutation`] for the exact derivation.

use std::path::{Path, PathBuf};

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::shard::TokenShard;
use crate::error::{EngineError, Result};

/// Where a loader's tokens come from.
pub enum TokenSource {
    Shard(TokenShard),
    /// Text tokenized at start-up; `name` stands in for a file name in errors.
    Memory {
        name: String,
        tokens: Vec<u16>,
    },
}

impl TokenSource {
    /// The file (or the in-memory source's name) that errors about these tokens name.
    pub fn path(&self) -> &Path {
        match self {
            TokenSource::Shard(s) => s.path(),
            TokenSource::Memory { name, .. } => Path::new(name),
        }
    }

    pub fn tokens(&self) -> &[u16] {
        match self {
            TokenSource::Shard(s) => s.tokens(),
            TokenSource::Memory { tokens, .. } => tokens,
        }
    }
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch: usize,
    pub seq_len: usize,
    pub rank: usize,
    pub world: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub vocab_size: usize,
}

/// The position of the next batch, saved in checkpoints for exact resume.
///
/// `shard` is the index in this epoch's order of sources (the index into the source list when
/// not shuffling) and `sample` counts the global batches already taken from that source this
/// epoch (the sample index itself when not shuffling).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoaderPosition {
    pub epoch: u64,
    pub shard: usize,
    pub sample: usize,
}

pub struct TokenLoader {
    sources: Vec<TokenSource>,
    /// Global batches in each source (0 for a source too short to hold one; it is skipped).
    samples: Vec<usize>,
    cfg: LoaderConfig,
    pos: LoaderPosition,
    /// Order in which sources are visited during `pos.epoch`.
    source_order: Vec<usize>,
    /// Order of samples within the current source during `pos.epoch`; empty when not shuffling.
    sample_order: Vec<usize>,
}

/// Stream tags for [`permutation`], so that the order of sources and the order of samples in a
/// source never share random numbers.
const SOURCE_ORDER_STREAM: u64 = 0;
const fn sample_order_stream(source: usize) -> u64 {
    1 + source as u64
}

/// A uniformly random permutation of `0..n` that is a pure function of its arguments, shared by
/// every loader in the data layer.
///
/// Derivation (kept stable, because checkpoints resume by recomputing it): a `ChaCha8Rng` is
/// created with `from_seed(key)`, where the 32-byte key is `seed`, `epoch` and `stream` as
/// little-endian `u64`s followed by eight zero bytes. Starting from the identity, for
/// `i = n-1` down to `1`, element `i` is swapped with element `j = (next_u64() · (i+1)) >> 64`
/// (a Fisher–Yates shuffle; the multiply-shift bias is below 2⁻³² for any realistic `n`). This is
/// written out rather than taken from `rand`'s `shuffle` so that a `rand` upgrade can never change
/// the order a saved position refers to.
pub(crate) fn permutation(n: usize, seed: u64, epoch: u64, stream: u64) -> Vec<usize> {
    let mut key = [0u8; 32];
    key[0..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&epoch.to_le_bytes());
    key[16..24].copy_from_slice(&stream.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(key);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        let j = ((u128::from(rng.next_u64()) * (i as u128 + 1)) >> 64) as usize;
        order.swap(i, j);
    }
    order
}

impl TokenLoader {
    pub fn new(sources: Vec<TokenSource>, cfg: LoaderConfig) -> Result<Self> {
        if sources.is_empty() {
            return Err(EngineError::Spec("data: no token sources given".into()));
        }
        let local = checked_product(&[cfg.batch, cfg.seq_len], "batch · seq_len")?;
        let global = checked_product(&[cfg.world, local], "world · batch · seq_len")?;
        if local == 0 || cfg.world == 0 {
            return Err(EngineError::Spec(format!(
                "data: batch ({}), seq_len ({}) and world ({}) must all be at least 1",
                cfg.batch, cfg.seq_len, cfg.world
            )));
        }
        if cfg.rank >= cfg.world {
            return Err(EngineError::Spec(format!(
                "data: rank {} is out of range for world size {}",
                cfg.rank, cfg.world
            )));
        }
        if cfg.vocab_size == 0 {
            return Err(EngineError::Spec(
                "data: vocab_size must be at least 1".into(),
            ));
        }
        let samples: Vec<usize> = sources
            .iter()
            .map(|s| s.tokens().len().saturating_sub(1) / global)
            .collect();
        if samples.iter().all(|&s| s == 0) {
            let largest = sources
                .iter()
                .max_by_key(|s| s.tokens().len())
                .map_or(0, |s| s.tokens().len());
            let names: Vec<String> = sources
                .iter()
                .map(|s| s.path().display().to_string())
                .collect();
            return Err(EngineError::data(
                sources[0].path(),
                format!(
                    "no complete batch: need at least world·B·T+1 = {} tokens in a shard, largest has {largest} (sources: {})",
                    global.saturating_add(1),
                    names.join(", ")
                ),
            ));
        }
        for (s, &n) in sources.iter().zip(&samples) {
            if n == 0 {
                tracing::warn!(
                    "{}: skipped: {} tokens is less than one global batch of world·B·T+1 = {}",
                    s.path().display(),
                    s.tokens().len(),
                    global.saturating_add(1)
                );
            }
        }
        let mut loader = TokenLoader {
            sources,
            samples,
            cfg,
            pos: LoaderPosition {
                epoch: 0,
                shard: 0,
                sample: 0,
            },
            source_order: Vec::new(),
            sample_order: Vec::new(),
        };
        loader.reset();
        Ok(loader)
    }

    pub fn open(paths: &[PathBuf], cfg: LoaderConfig) -> Result<Self> {
        let sources = paths
            .iter()
            .map(|p| TokenShard::open(p).map(TokenSource::Shard))
            .collect::<Result<Vec<_>>>()?;
        Self::new(sources, cfg)
    }

    /// Fills `inputs` and `targets` (each `B·T` long) with this rank's slice of the next global
    /// batch. On error the position does not move.
    ///
    /// # Panics
    /// If a buffer is not `B·T` long: that is a bug in the caller, not bad data.
    pub fn next_batch(&mut self, inputs: &mut [u32], targets: &mut [u32]) -> Result<()> {
        let local = self.cfg.batch * self.cfg.seq_len;
        assert_eq!(
            inputs.len(),
            local,
            "inputs buffer must hold batch·seq_len tokens"
        );
        assert_eq!(
            targets.len(),
            local,
            "targets buffer must hold batch·seq_len tokens"
        );
        let source_index = self.source_order[self.pos.shard];
        let sample = if self.cfg.shuffle {
            self.sample_order[self.pos.sample]
        } else {
            self.pos.sample
        };
        let start = sample * self.cfg.world * local + self.cfg.rank * local;
        let source = &self.sources[source_index];
        let window = &source.tokens()[start..start + local + 1];
        if let Some(i) = window
            .iter()
            .position(|&t| usize::from(t) >= self.cfg.vocab_size)
        {
            return Err(EngineError::data(
                source.path(),
                format!(
                    "token {} at index {} is out of range for vocab size {}",
                    window[i],
                    start + i,
                    self.cfg.vocab_size
                ),
            ));
        }
        for (dst, &t) in inputs.iter_mut().zip(&window[..local]) {
            *dst = u32::from(t);
        }
        for (dst, &t) in targets.iter_mut().zip(&window[1..]) {
            *dst = u32::from(t);
        }
        self.pos.sample += 1;
        self.settle();
        Ok(())
    }

    pub fn position(&self) -> LoaderPosition {
        self.pos
    }

    /// Restores a position saved by [`position`](Self::position). The position must point at
    /// an existing sample of these sources; a checkpoint from a run on other data is refused
    /// rather than silently resuming somewhere else.
    pub fn set_position(&mut self, pos: LoaderPosition) -> Result<()> {
        let n = self.sources.len();
        if pos.shard >= n {
            return Err(EngineError::data(
                self.sources[0].path(),
                format!(
                    "cannot resume at shard {} (epoch {}, sample {}): there are only {n} sources",
                    pos.shard, pos.epoch, pos.sample
                ),
            ));
        }
        let source_order = self.order_of_sources(pos.epoch);
        let source = source_order[pos.shard];
        if pos.sample >= self.samples[source] {
            return Err(EngineError::data(
                self.sources[source].path(),
                format!(
                    "cannot resume at sample {} (epoch {}, shard {}): this source has {} samples of world·B·T = {} tokens",
                    pos.sample,
                    pos.epoch,
                    pos.shard,
                    self.samples[source],
                    self.cfg.world * self.cfg.batch * self.cfg.seq_len
                ),
            ));
        }
        self.pos = pos;
        self.source_order = source_order;
        self.sample_order = self.order_of_samples(pos.epoch, source);
        Ok(())
    }

    pub fn reset(&mut self) {
        self.pos = LoaderPosition {
            epoch: 0,
            shard: 0,
            sample: 0,
        };
        self.source_order = self.order_of_sources(0);
        self.sample_order = self.order_of_samples(0, self.source_order[0]);
        self.settle();
    }

    pub fn batches_per_epoch(&self) -> usize {
        self.samples.iter().sum()
    }

    /// Moves `pos` forward past exhausted (or empty) sources, across epochs, refreshing the
    /// cached orders. Terminates because `new` guarantees some source has a sample.
    fn settle(&mut self) {
        loop {
            let source = self.source_order[self.pos.shard];
            if self.pos.sample < self.samples[source] {
                return;
            }
            self.pos.sample = 0;
            self.pos.shard += 1;
            if self.pos.shard == self.sources.len() {
                self.pos.shard = 0;
                self.pos.epoch += 1;
                self.source_order = self.order_of_sources(self.pos.epoch);
            }
            let source = self.source_order[self.pos.shard];
            self.sample_order = self.order_of_samples(self.pos.epoch, source);
        }
    }

    fn order_of_sources(&self, epoch: u64) -> Vec<usize> {
        let n = self.sources.len();
        if self.cfg.shuffle {
            permutation(n, self.cfg.seed, epoch, SOURCE_ORDER_STREAM)
        } else {
            (0..n).collect()
        }
    }

    fn order_of_samples(&self, epoch: u64, source: usize) -> Vec<usize> {
        if self.cfg.shuffle {
            permutation(
                self.samples[source],
                self.cfg.seed,
                epoch,
                sample_order_stream(source),
            )
        } else {
            Vec::new()
        }
    }
}

fn checked_product(factors: &[usize], what: &str) -> Result<usize> {
    factors
        .iter()
        .try_fold(1usize, |acc, &f| acc.checked_mul(f))
        .ok_or_else(|| EngineError::Spec(format!("data: {what} overflows")))
}

/// Expands a data path from a job spec: a directory (its `*.bin` files), a single file, or a
/// pattern with `*` in the file-name part (`data/train_*.bin`). Results are sorted by name so
/// every rank and every resume sees the same source order.
pub fn expand_paths(pattern: &Path) -> Result<Vec<PathBuf>> {
    let text = pattern
        .to_str()
        .ok_or_else(|| EngineError::data(pattern, "data path is not valid UTF-8"))?;
    let (dir, name_pattern) = if text.contains('*') {
        let name = pattern
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let parent = pattern.parent().unwrap_or(Path::new(""));
        if !name.contains('*') || parent.to_string_lossy().contains('*') {
            return Err(EngineError::data(
                pattern,
                "`*` is only supported in the file-name part of a data path",
            ));
        }
        (parent.to_path_buf(), name.to_string())
    } else {
        let meta = std::fs::metadata(pattern).map_err(|e| EngineError::io(pattern, e))?;
        if !meta.is_dir() {
            return Ok(vec![pattern.to_path_buf()]);
        }
        (pattern.to_path_buf(), "*.bin".to_string())
    };
    let listed = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        &dir
    };
    let entries = std::fs::read_dir(listed).map_err(|e| EngineError::io(listed, e))?;
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| EngineError::io(listed, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let path = dir.join(name);
        if wildcard_match(&name_pattern, name) && path.is_file() {
            paths.push(path);
        }
    }
    if paths.is_empty() {
        return Err(EngineError::data(pattern, "no data files match this path"));
    }
    paths.sort();
    Ok(paths)
}

/// `*` matches any run of characters (including none); everything else matches itself.
fn wildcard_match(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::write_shard;

    fn cfg(batch: usize, seq_len: usize, rank: usize, world: usize, shuffle: bool) -> LoaderConfig {
        LoaderConfig {
            batch,
            seq_len,
            rank,
            world,
            shuffle,
            seed: 7,
            vocab_size: 65536,
        }
    }

    fn memory(name: &str, tokens: Vec<u16>) -> TokenSource {
        TokenSource::Memory {
            name: name.into(),
            tokens,
        }
    }

    /// Sources whose token at index i is `base + i`, so a batch reveals where it was read from.
    fn counting(lens: &[usize]) -> Vec<TokenSource> {
        lens.iter()
            .enumerate()
            .map(|(k, &n)| {
                memory(
                    &format!("src{k}"),
                    (0..n).map(|i| (k * 10_000 + i) as u16).collect(),
                )
            })
            .collect()
    }

    fn batch(loader: &mut TokenLoader) -> (Vec<u32>, Vec<u32>) {
        let n = loader.cfg.batch * loader.cfg.seq_len;
        let (mut x, mut y) = (vec![0; n], vec![0; n]);
        loader.next_batch(&mut x, &mut y).unwrap();
        (x, y)
    }

    #[test]
    fn one_rank_step_i_reads_llmc_window() {
        // B=2, T=4: G = 8; 30 tokens -> (30-1)/8 = 3 samples.
        let mut l = TokenLoader::new(counting(&[30]), cfg(2, 4, 0, 1, false)).unwrap();
        assert_eq!(l.batches_per_epoch(), 3);
        for step in 0..7u64 {
            let i = (step % 3) as u32;
            assert_eq!(
                l.position(),
                LoaderPosition {
                    epoch: step / 3,
                    shard: 0,
                    sample: i as usize
                }
            );
            let (x, y) = batch(&mut l);
            let want: Vec<u32> = (i * 8..i * 8 + 9).collect();
            assert_eq!(x, want[..8], "step {step}");
            assert_eq!(y, want[1..], "step {step}");
        }
    }

    #[test]
    fn three_ranks_read_their_slices_and_wrap_shards_and_epochs() {
        // B=1, T=3, world=3: G = 9. Source lengths 19 -> 2 samples, 5 -> skipped, 10 -> 1 sample.
        let lens = [19, 5, 10];
        let mut loaders: Vec<TokenLoader> = (0..3)
            .map(|r| TokenLoader::new(counting(&lens), cfg(1, 3, r, 3, false)).unwrap())
            .collect();
        let visits = [(0, 0), (0, 1), (2, 0)];
        for step in 0..8 {
            let (src, i) = visits[step % 3];
            for (r, l) in loaders.iter_mut().enumerate() {
                assert_eq!(
                    l.position(),
                    LoaderPosition {
                        epoch: (step / 3) as u64,
                        shard: src,
                        sample: i
                    }
                );
                let (x, y) = batch(l);
                let start = (src * 10_000 + i * 9 + r * 3) as u32;
                assert_eq!(
                    x,
                    (start..start + 3).collect::<Vec<_>>(),
                    "step {step} rank {r}"
                );
                assert_eq!(
                    y,
                    (start + 1..start + 4).collect::<Vec<_>>(),
                    "step {step} rank {r}"
                );
            }
        }
        assert_eq!(loaders[0].batches_per_epoch(), 3);
    }

    #[test]
    fn no_complete_batch_is_an_error_naming_sizes() {
        let err = TokenLoader::new(counting(&[5, 8]), cfg(2, 4, 0, 1, false))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("no complete batch")
                && err.contains("= 9 tokens")
                && err.contains("largest has 8")
                && err.contains("src0")
                && err.contains("src1"),
            "{err}"
        );
        // An empty in-memory source (say, a validation split of 0 tokens) is skipped, not a panic.
        let err = TokenLoader::new(counting(&[0]), cfg(2, 4, 0, 1, false))
            .err()
            .unwrap();
        assert!(err.to_string().contains("largest has 0"), "{err}");
        assert_eq!(
            TokenLoader::new(counting(&[0, 20]), cfg(2, 4, 0, 1, false))
                .unwrap()
                .batches_per_epoch(),
            2
        );
        // 9 tokens is exactly one sample.
        assert!(TokenLoader::new(counting(&[9]), cfg(2, 4, 0, 1, false)).is_ok());
    }

    #[test]
    fn bad_configs_are_refused() {
        assert!(TokenLoader::new(counting(&[100]), cfg(1, 4, 3, 3, false)).is_err());
        assert!(TokenLoader::new(counting(&[100]), cfg(0, 4, 0, 1, false)).is_err());
        assert!(TokenLoader::new(Vec::new(), cfg(1, 4, 0, 1, false)).is_err());
    }

    #[test]
    fn out_of_range_token_names_file_index_value_and_vocab() {
        let mut tokens: Vec<u16> = vec![1; 40];
        tokens[13] = 300;
        let mut c = cfg(1, 4, 0, 1, false);
        c.vocab_size = 256;
        let mut l = TokenLoader::new(vec![memory("bad.txt", tokens)], c).unwrap();
        for _ in 0..3 {
            batch(&mut l); // tokens [0, 13)
        }
        let (mut x, mut y) = (vec![0; 4], vec![0; 4]);
        let err = l.next_batch(&mut x, &mut y).unwrap_err().to_string();
        assert_eq!(
            err,
            "bad.txt: token 300 at index 13 is out of range for vocab size 256"
        );
        // The position did not move past the bad batch.
        assert_eq!(l.position().sample, 3);
    }

    #[test]
    fn permutation_is_a_pure_function_and_a_permutation() {
        let a = permutation(1000, 1, 2, 3);
        assert_eq!(a, permutation(1000, 1, 2, 3));
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, (0..1000).collect::<Vec<_>>());
        assert_ne!(a, permutation(1000, 2, 2, 3));
        assert_ne!(a, permutation(1000, 1, 3, 3));
        assert_ne!(a, permutation(1000, 1, 2, 4));
        assert!(permutation(0, 1, 2, 3).is_empty());
        assert_eq!(permutation(1, 1, 2, 3), vec![0]);
        // Pinned so an accidental change to the derivation (which would break resuming old
        // checkpoints) fails loudly.
        assert_eq!(permutation(8, 42, 0, 0), PINNED_PERMUTATION);
    }

    const PINNED_PERMUTATION: [usize; 8] = [4, 5, 0, 3, 6, 7, 1, 2];

    #[test]
    fn shuffle_visits_every_sample_once_per_epoch_and_depends_only_on_seed_and_epoch() {
        // B=1, T=2, world=2: G = 4. Lengths 41 -> 10 samples, 21 -> 5, 13 -> 3.
        let lens = [41, 21, 13];
        let mut c = cfg(1, 2, 0, 2, true);
        let mut a = TokenLoader::new(counting(&lens), c.clone()).unwrap();
        let mut b = TokenLoader::new(counting(&lens), c.clone()).unwrap();
        c.rank = 1;
        let mut a1 = TokenLoader::new(counting(&lens), c.clone()).unwrap();
        let per_epoch = a.batches_per_epoch();
        assert_eq!(per_epoch, 18);
        let mut epochs = Vec::new();
        for epoch in 0..3 {
            let mut firsts = Vec::new();
            for _ in 0..per_epoch {
                let (x, _) = batch(&mut a);
                assert_eq!(batch(&mut b).0, x);
                // Rank 1 reads the second slice of the same global batch.
                assert_eq!(batch(&mut a1).0[0], x[0] + 2);
                firsts.push(x[0]);
            }
            assert_eq!(a.position().epoch, epoch + 1);
            let mut sorted = firsts.clone();
            sorted.sort();
            let mut expected: Vec<u32> = Vec::new();
            for (k, &n) in lens.iter().enumerate() {
                expected.extend((0..(n - 1) / 4).map(|i| (k * 10_000 + i * 4) as u32));
            }
            assert_eq!(
                sorted, expected,
                "epoch {epoch} is not a permutation of the samples"
            );
            epochs.push(firsts);
        }
        assert_ne!(epochs[0], epochs[1]);
        assert_ne!(epochs[1], epochs[2]);
        let unshuffled = {
            let mut v = epochs[0].clone();
            v.sort();
            v
        };
        assert_ne!(epochs[0], unshuffled);
        c.rank = 0;
        c.seed = 8;
        let mut other = TokenLoader::new(counting(&lens), c).unwrap();
        let other_firsts: Vec<u32> = (0..per_epoch).map(|_| batch(&mut other).0[0]).collect();
        assert_ne!(other_firsts, epochs[0]);
    }

    #[test]
    fn exact_resume_across_epochs() {
        for shuffle in [false, true] {
            let lens = [41, 3, 21, 13];
            let c = cfg(2, 2, 1, 2, shuffle); // G = 8: 5 + 0 + 2 + 1 = 8 samples per epoch
            let mut reference = TokenLoader::new(counting(&lens), c.clone()).unwrap();
            assert_eq!(reference.batches_per_epoch(), 8);
            let all: Vec<_> = (0..30).map(|_| batch(&mut reference)).collect();
            for k in [0, 3, 7, 8, 13, 16, 21] {
                let mut l = TokenLoader::new(counting(&lens), c.clone()).unwrap();
                for _ in 0..k {
                    batch(&mut l);
                }
                let saved = l.position();
                let json = serde_json::to_string(&saved).unwrap();
                let mut fresh = TokenLoader::new(counting(&lens), c.clone()).unwrap();
                fresh
                    .set_position(serde_json::from_str(&json).unwrap())
                    .unwrap();
                assert_eq!(fresh.position(), saved);
                for (j, want) in all[k..k + 9].iter().enumerate() {
                    assert_eq!(
                        &batch(&mut fresh),
                        want,
                        "shuffle={shuffle} resume at {k}, +{j}"
                    );
                }
            }
            reference.reset();
            assert_eq!(batch(&mut reference), all[0]);
        }
    }

    #[test]
    fn set_position_out_of_range_is_refused() {
        let mut l = TokenLoader::new(counting(&[41, 3]), cfg(1, 4, 0, 1, false)).unwrap();
        let err = l
            .set_position(LoaderPosition {
                epoch: 0,
                shard: 2,
                sample: 0,
            })
            .unwrap_err();
        assert!(err.to_string().contains("only 2 sources"), "{err}");
        let err = l
            .set_position(LoaderPosition {
                epoch: 0,
                shard: 0,
                sample: 10,
            })
            .unwrap_err();
        assert!(
            err.to_string().contains("src0") && err.to_string().contains("10 samples"),
            "{err}"
        );
        // The skipped (too short) source has no samples to resume at.
        assert!(
            l.set_position(LoaderPosition {
                epoch: 0,
                shard: 1,
                sample: 0
            })
            .is_err()
        );
        assert!(
            l.set_position(LoaderPosition {
                epoch: 5,
                shard: 0,
                sample: 9
            })
            .is_ok()
        );
    }

    #[test]
    fn open_reads_shards() {
        let dir = tempfile::tempdir().unwrap();
        let paths: Vec<PathBuf> = (0..2)
            .map(|k| {
                let p = dir.path().join(format!("train_{k:06}.bin"));
                write_shard(
                    &p,
                    &(0..20).map(|i| (k * 100 + i) as u16).collect::<Vec<_>>(),
                )
                .unwrap();
                p
            })
            .collect();
        let mut l = TokenLoader::open(&paths, cfg(1, 8, 0, 1, false)).unwrap();
        assert_eq!(l.batches_per_epoch(), 4);
        let firsts: Vec<u32> = (0..5).map(|_| batch(&mut l).0[0]).collect();
        assert_eq!(firsts, [0, 8, 100, 108, 0]);
    }

    #[test]
    fn expand_paths_directory_file_and_patterns() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in [
            "val_000000.bin",
            "train_000001.bin",
            "train_000000.bin",
            "notes.txt",
        ] {
            std::fs::write(d.join(name), b"x").unwrap();
        }
        std::fs::create_dir(d.join("sub.bin")).unwrap();
        assert_eq!(
            expand_paths(d).unwrap(),
            [
                d.join("train_000000.bin"),
                d.join("train_000001.bin"),
                d.join("val_000000.bin")
            ]
        );
        assert_eq!(
            expand_paths(&d.join("train_*.bin")).unwrap(),
            [d.join("train_000000.bin"), d.join("train_000001.bin")]
        );
        assert_eq!(
            expand_paths(&d.join("*_000000.*")).unwrap(),
            [d.join("train_000000.bin"), d.join("val_000000.bin")]
        );
        assert_eq!(
            expand_paths(&d.join("notes.txt")).unwrap(),
            [d.join("notes.txt")]
        );
        let err = expand_paths(&d.join("test_*.bin")).unwrap_err().to_string();
        assert!(
            err.contains("test_*.bin") && err.contains("no data files match"),
            "{err}"
        );
        let err = expand_paths(&d.join("missing.bin"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("missing.bin"), "{err}");
        assert!(expand_paths(&d.join("*/train.bin")).is_err());
        let empty = d.join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(
            expand_paths(&empty)
                .unwrap_err()
                .to_string()
                .contains("no data files")
        );
    }

    #[test]
    fn wildcards() {
        assert!(wildcard_match("*", "abc"));
        assert!(wildcard_match("a*c", "abc"));
        assert!(wildcard_match("a*c", "ac"));
        assert!(!wildcard_match("a*c", "abcd"));
        assert!(wildcard_match("a*b*c", "aXbYc"));
        assert!(!wildcard_match("ab*ba", "aba"));
        assert!(wildcard_match("abc", "abc"));
        assert!(!wildcard_match("abc", "abd"));
    }
}
