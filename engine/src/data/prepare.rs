//! `convoy data prepare`: text files to llm.c token shards.
//!
//! Each input file is one document. Its token stream is the EOT token (when the tokenizer has
//! one, as llm.c prepends it) followed by the file's tokens. The validation split takes the
//! **first** `ceil(val_fraction · n)` tokens of each document's stream of `n` tokens and training
//! the rest, so, as in llm.c's tinyshakespeare (whose validation set is its first 32,768
//! tokens), validation documents start at a document boundary, and every document contributes to
//! both splits in proportion. `val_fraction = 0` means no validation data.
//!
//! Note: llm.c's own tinyshakespeare script treats every `\n\n`-separated section as a document;
//! here documents are files, so shards are not byte-identical to llm.c's.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::shard::{write_atomically, write_shard};
use super::tokenizer::{Tokenizer, TokenizerKind};
use crate::error::{EngineError, Result};

pub const DEFAULT_SHARD_TOKENS: usize = 100_000_000;
/// Written next to the shards so training can check that the model's tokenizer matches.
pub const DATASET_INFO_FILE: &str = "dataset.json";

/// Bytes read per step; also how often `progress` is called.
const READ_CHUNK: usize = 4 << 20;

#[derive(Clone, Debug)]
pub struct PrepareOptions {
    pub tokenizer: TokenizerKind,
    pub val_fraction: f64,
    pub shard_tokens: usize,
}

impl Default for PrepareOptions {
    fn default() -> Self {
        PrepareOptions {
            tokenizer: TokenizerKind::Gpt2,
            val_fraction: 0.1,
            shard_tokens: DEFAULT_SHARD_TOKENS,
        }
    }
}

#[derive(Clone, Debug)]
pub struct PrepareReport {
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub train_shards: Vec<PathBuf>,
    pub val_shards: Vec<PathBuf>,
}

/// The contents of `dataset.json`. Shard names are relative to the file's directory so a
/// prepared directory can be moved.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DatasetInfo {
    pub tokenizer: TokenizerKind,
    pub vocab_size: usize,
    pub eot: Option<u32>,
    pub val_fraction: f64,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub train_shards: Vec<String>,
    pub val_shards: Vec<String>,
}

impl DatasetInfo {
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = super::open::read_regular(path)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| EngineError::data(path, "not UTF-8: not a dataset description"))?;
        serde_json::from_str(&text)
            .map_err(|e| EngineError::data(path, format!("not a valid dataset description: {e}")))
    }
}

/// Splits one document's token stream into `(train, val)`: val is the first
/// `ceil(val_fraction · n)` tokens, train the rest. Fractions outside `[0, 1]` (and NaN) are
/// clamped, so this never panics; callers validate user input first.
pub fn split_tokens<T>(doc: &[T], val_fraction: f64) -> (&[T], &[T]) {
    // `as` saturates: NaN and negatives give 0.
    let n_val = ((val_fraction * doc.len() as f64).ceil() as usize).min(doc.len());
    let (val, train) = doc.split_at(n_val);
    (train, val)
}

/// Tokenizes `text` as one document (EOT first when the tokenizer has one) and splits it with
/// [`split_tokens`]. Used for text data sources tokenized at start-up; gives exactly the tokens
/// `prepare` would write for the same text in one file.
pub fn tokenize_text(text: &str, tokenizer: &Tokenizer, val_fraction: f64) -> (Vec<u16>, Vec<u16>) {
    let doc: Vec<u16> = tokenizer
        .eot()
        .into_iter()
        .chain(tokenizer.encode(text))
        .map(|t| u16::try_from(t).expect("tokenizer vocabularies have at most 65536 ids"))
        .collect();
    let (train, val) = split_tokens(&doc, val_fraction);
    (train.to_vec(), val.to_vec())
}

/// Tokenizes `inputs` (UTF-8 text files, one document each) into `out_dir/train_NNNNNN.bin`,
/// `out_dir/val_NNNNNN.bin` (at most `shard_tokens` tokens each) and `out_dir/dataset.json`.
///
/// Each document's tokens are held in memory (2 bytes per token) until it is split; shards are
/// written as they fill. Shards with these names left from an earlier, larger run are removed,
/// because a directory data path would otherwise pick them up.
pub fn prepare(
    inputs: &[PathBuf],
    out_dir: &Path,
    opts: &PrepareOptions,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<PrepareReport> {
    if !(0.0..1.0).contains(&opts.val_fraction) {
        return Err(EngineError::Spec(format!(
            "data prepare: val_fraction must be in [0, 1), got {}",
            opts.val_fraction
        )));
    }
    if opts.shard_tokens == 0 || opts.shard_tokens > i32::MAX as usize {
        return Err(EngineError::Spec(format!(
            "data prepare: shard_tokens must be between 1 and {}, got {}",
            i32::MAX,
            opts.shard_tokens
        )));
    }
    if inputs.is_empty() {
        return Err(EngineError::Spec(
            "data prepare: no input files given".into(),
        ));
    }
    let mut total = 0u64;
    for input in inputs {
        let meta = std::fs::metadata(input).map_err(|e| EngineError::io(input, e))?;
        if !meta.is_file() {
            return Err(EngineError::data(input, "input is not a regular file"));
        }
        if meta.len() == 0 {
            return Err(EngineError::data(
                input,
                "input file is empty (no text to tokenize)",
            ));
        }
        total += meta.len();
    }
    let tokenizer = Tokenizer::new(opts.tokenizer)?;
    std::fs::create_dir_all(out_dir).map_err(|e| EngineError::io(out_dir, e))?;
    // A description from an earlier run must not outlive the shards it describes if this run
    // fails part way.
    let info_path = out_dir.join(DATASET_INFO_FILE);
    match std::fs::remove_file(&info_path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(EngineError::io(&info_path, e));
        }
        _ => {}
    }

    let mut train = ShardWriter::new(out_dir, "train", opts.shard_tokens);
    let mut val = ShardWriter::new(out_dir, "val", opts.shard_tokens);
    let mut done = 0u64;
    progress(done, total);
    for input in inputs {
        let doc = tokenize_file(input, &tokenizer, READ_CHUNK, &mut |n| {
            done += n;
            progress(done, total);
        })?;
        let (t, v) = split_tokens(&doc, opts.val_fraction);
        train.push(t)?;
        val.push(v)?;
    }
    let (train_tokens, train_shards) = train.finish()?;
    let (val_tokens, val_shards) = val.finish()?;
    if train_tokens == 0 {
        return Err(EngineError::data(
            &inputs[0],
            format!(
                "val_fraction {} leaves no training tokens ({val_tokens} tokens in all)",
                opts.val_fraction
            ),
        ));
    }
    remove_stale_shards(out_dir, &train_shards, &val_shards)?;

    let names = |paths: &[PathBuf]| -> Vec<String> {
        paths
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect()
    };
    let info = DatasetInfo {
        tokenizer: opts.tokenizer,
        vocab_size: tokenizer.vocab_size(),
        eot: tokenizer.eot(),
        val_fraction: opts.val_fraction,
        train_tokens,
        val_tokens,
        train_shards: names(&train_shards),
        val_shards: names(&val_shards),
    };
    let json = serde_json::to_string_pretty(&info)
        .map_err(|e| EngineError::data(&info_path, format!("cannot serialize: {e}")))?;
    write_atomically(&info_path, |w| {
        std::io::Write::write_all(w, json.as_bytes())
    })?;
    Ok(PrepareReport {
        train_tokens,
        val_tokens,
        train_shards,
        val_shards,
    })
}

/// Buffers one split's tokens and writes a shard each time `shard_tokens` accumulate.
struct ShardWriter<'a> {
    dir: &'a Path,
    prefix: &'static str,
    shard_tokens: usize,
    buf: Vec<u16>,
    written: Vec<PathBuf>,
    total: usize,
}

impl<'a> ShardWriter<'a> {
    fn new(dir: &'a Path, prefix: &'static str, shard_tokens: usize) -> Self {
        ShardWriter {
            dir,
            prefix,
            shard_tokens,
            buf: Vec::new(),
            written: Vec::new(),
            total: 0,
        }
    }

    fn push(&mut self, mut tokens: &[u16]) -> Result<()> {
        self.total += tokens.len();
        while !tokens.is_empty() {
            let take = (self.shard_tokens - self.buf.len()).min(tokens.len());
            self.buf.extend_from_slice(&tokens[..take]);
            tokens = &tokens[take..];
            if self.buf.len() == self.shard_tokens {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        let path = self
            .dir
            .join(format!("{}_{:06}.bin", self.prefix, self.written.len()));
        write_shard(&path, &self.buf)?;
        self.written.push(path);
        self.buf.clear();
        Ok(())
    }

    fn finish(mut self) -> Result<(usize, Vec<PathBuf>)> {
        if !self.buf.is_empty() {
            self.flush()?;
        }
        Ok((self.total, self.written))
    }
}

/// Removes `train_NNNNNN.bin` / `val_NNNNNN.bin` files in `dir` that this run did not write.
fn remove_stale_shards(dir: &Path, train: &[PathBuf], val: &[PathBuf]) -> Result<()> {
    let entries = std::fs::read_dir(dir).map_err(|e| EngineError::io(dir, e))?;
    for entry in entries {
        let path = entry.map_err(|e| EngineError::io(dir, e))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let is_shard_name = ["train_", "val_"].iter().any(|prefix| {
            name.strip_prefix(prefix)
                .and_then(|rest| rest.strip_suffix(".bin"))
                .is_some_and(|digits| {
                    digits.len() == 6 && digits.bytes().all(|b| b.is_ascii_digit())
                })
        });
        if is_shard_name && !train.contains(&path) && !val.contains(&path) {
            tracing::info!(
                "{}: removing a shard left from an earlier run",
                path.display()
            );
            std::fs::remove_file(&path).map_err(|e| EngineError::io(&path, e))?;
        }
    }
    Ok(())
}

/// Tokenizes one file as a document, reading `chunk` bytes at a time so progress can be shown
/// and invalid UTF-8 reported with its byte offset.
///
/// The text is only cut where the cut cannot change the tokens: right after a `\n` that sits
/// between two printable ASCII characters. GPT-2's pre-tokenizer never joins `\n` with a
/// non-space character, and with a non-space character before it the trailing `\n` of a chunk
/// is the same lone piece that it is mid-text (a longer whitespace run at the end of a chunk
/// could instead match the pattern's end-of-text rule). Without such a point the text
/// accumulates until one appears or the file ends.
fn tokenize_file(
    path: &Path,
    tokenizer: &Tokenizer,
    chunk: usize,
    progress: &mut dyn FnMut(u64),
) -> Result<Vec<u16>> {
    let mut file = super::open::open_regular(path)?;
    let mut doc: Vec<u16> = Vec::new();
    append_tokens(&mut doc, path, tokenizer.eot())?;

    let mut pending: Vec<u8> = Vec::new(); // read but not yet tokenized
    let mut offset = 0u64; // file offset of pending[0]
    let mut valid = 0; // pending[..valid] is known to be UTF-8
    let mut searched = 0; // no cut point starts before this in pending
    let mut buf = vec![0u8; chunk];
    loop {
        let n = read_some(&mut file, &mut buf).map_err(|e| EngineError::io(path, e))?;
        let eof = n == 0;
        pending.extend_from_slice(&buf[..n]);
        match std::str::from_utf8(&pending[valid..]) {
            Ok(_) => valid = pending.len(),
            Err(e) => {
                valid += e.valid_up_to();
                // An incomplete sequence at the end may be completed by the next read.
                if e.error_len().is_some() || eof {
                    return Err(EngineError::data(
                        path,
                        format!("not valid UTF-8 at byte offset {}", offset + valid as u64),
                    ));
                }
            }
        }
        let cut = if eof {
            pending.len()
        } else {
            last_cut(&pending[searched..valid]).map_or(0, |c| searched + c)
        };
        if cut > 0 {
            let text = std::str::from_utf8(&pending[..cut])
                .map_err(|e| EngineError::data(path, format!("not valid UTF-8: {e}")))?;
            append_tokens(&mut doc, path, tokenizer.encode(text))?;
        }
        if eof {
            return Ok(doc);
        }
        // Windows starting before valid - 2 have been searched; none of them lies past `cut`.
        searched = valid.saturating_sub(2).max(cut) - cut;
        pending.drain(..cut);
        offset += cut as u64;
        valid -= cut;
        progress(n as u64);
    }
}

fn append_tokens(
    doc: &mut Vec<u16>,
    path: &Path,
    tokens: impl IntoIterator<Item = u32>,
) -> Result<()> {
    for t in tokens {
        let t = u16::try_from(t).map_err(|_| {
            EngineError::data(path, format!("token id {t} does not fit a uint16 shard"))
        })?;
        doc.push(t);
    }
    Ok(())
}

/// The position just after the last `\n` in `bytes` that has a printable ASCII character on
/// both sides.
fn last_cut(bytes: &[u8]) -> Option<usize> {
    bytes
        .windows(3)
        .rposition(|w| w[1] == b'\n' && w[0].is_ascii_graphic() && w[2].is_ascii_graphic())
        .map(|i| i + 2)
}

fn read_some(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::shard::TokenShard;

    fn shakespeare() -> String {
        let path = convoy_testkit::examples("data/tinyshakespeare.txt");
        let text = std::fs::read_to_string(path).unwrap();
        text.chars().take(20_000).collect()
    }

    fn read_tokens(paths: &[PathBuf]) -> Vec<u16> {
        paths
            .iter()
            .flat_map(|p| TokenShard::open(p).unwrap().tokens().to_vec())
            .collect()
    }

    #[test]
    fn split_rule() {
        let doc: Vec<u32> = (0..10).collect();
        assert_eq!(split_tokens(&doc, 0.0), (&doc[..], &doc[..0]));
        assert_eq!(split_tokens(&doc, 0.25), (&doc[3..], &doc[..3]));
        assert_eq!(split_tokens(&doc, 0.3), (&doc[3..], &doc[..3]));
        assert_eq!(split_tokens(&doc, 0.01), (&doc[1..], &doc[..1]));
        assert_eq!(split_tokens(&doc, 2.0), (&doc[..0], &doc[..]));
        assert_eq!(split_tokens(&doc, f64::NAN), (&doc[..], &doc[..0]));
        assert_eq!(split_tokens(&doc, -1.0), (&doc[..], &doc[..0]));
    }

    #[test]
    fn tokenize_text_prefixes_eot_and_splits() {
        let gpt2 = Tokenizer::new(TokenizerKind::Gpt2).unwrap();
        let (train, val) = tokenize_text("Hello world", &gpt2, 0.0);
        assert_eq!(train, [50256, 15496, 995]);
        assert!(val.is_empty());
        let (train, val) = tokenize_text("Hello world", &gpt2, 0.5);
        assert_eq!(
            (train.as_slice(), val.as_slice()),
            (&[995u16][..], &[50256u16, 15496][..])
        );
        let byte = Tokenizer::new(TokenizerKind::Byte).unwrap();
        let (train, val) = tokenize_text("abcd", &byte, 0.25);
        assert_eq!(
            (train.as_slice(), val.as_slice()),
            (&[98u16, 99, 100][..], &[97u16][..])
        );
    }

    #[test]
    fn chunked_tokenization_equals_whole_text() {
        let text = format!(
            "{}\nend  \n\nx\n \n{}",
            shakespeare(),
            "héllo wörld\n".repeat(50)
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("in.txt");
        std::fs::write(&path, &text).unwrap();
        for kind in [TokenizerKind::Gpt2, TokenizerKind::Byte] {
            let tok = Tokenizer::new(kind).unwrap();
            let (whole, _) = tokenize_text(&text, &tok, 0.0);
            for chunk in [1, 7, 64, 4096, 1 << 20] {
                let mut seen = 0;
                let doc = tokenize_file(&path, &tok, chunk, &mut |n| seen += n).unwrap();
                assert_eq!(doc, whole, "{kind:?}, chunk {chunk}");
                assert_eq!(seen, text.len() as u64);
            }
        }
    }

    #[test]
    fn prepare_writes_shards_equal_to_tokenize_text() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.txt"), dir.path().join("b.txt"));
        let text_a = shakespeare();
        let text_b = "Second document.\nWith two lines.\n".repeat(30);
        std::fs::write(&a, &text_a).unwrap();
        std::fs::write(&b, &text_b).unwrap();
        let out = dir.path().join("out");
        let opts = PrepareOptions {
            tokenizer: TokenizerKind::Gpt2,
            val_fraction: 0.1,
            shard_tokens: 1000,
        };
        let mut calls = Vec::new();
        let report = prepare(&[a.clone(), b.clone()], &out, &opts, &mut |d, t| {
            calls.push((d, t))
        })
        .unwrap();

        let tok = Tokenizer::new(TokenizerKind::Gpt2).unwrap();
        let (ta, va) = tokenize_text(&text_a, &tok, 0.1);
        let (tb, vb) = tokenize_text(&text_b, &tok, 0.1);
        let train: Vec<u16> = ta.iter().chain(&tb).copied().collect();
        let val: Vec<u16> = va.iter().chain(&vb).copied().collect();
        assert_eq!(read_tokens(&report.train_shards), train);
        assert_eq!(read_tokens(&report.val_shards), val);
        assert_eq!(
            (report.train_tokens, report.val_tokens),
            (train.len(), val.len())
        );
        assert_eq!(report.train_shards.len(), train.len().div_ceil(1000));
        assert_eq!(report.train_shards[1], out.join("train_000001.bin"));
        assert_eq!(report.val_shards[0], out.join("val_000000.bin"));
        assert!(
            report.train_shards[..report.train_shards.len() - 1]
                .iter()
                .all(|p| TokenShard::open(p).unwrap().len() == 1000)
        );

        let total = (text_a.len() + text_b.len()) as u64;
        assert_eq!(calls.first(), Some(&(0, total)));
        assert_eq!(calls.last(), Some(&(total, total)));
        assert!(calls.windows(2).all(|w| w[0].0 <= w[1].0));

        let info = DatasetInfo::load(&out.join(DATASET_INFO_FILE)).unwrap();
        assert_eq!(info.tokenizer, TokenizerKind::Gpt2);
        assert_eq!(info.vocab_size, 50257);
        assert_eq!(info.eot, Some(50256));
        assert_eq!(
            (info.train_tokens, info.val_tokens),
            (train.len(), val.len())
        );
        assert_eq!(info.train_shards[0], "train_000000.bin");
        let json = std::fs::read_to_string(out.join(DATASET_INFO_FILE)).unwrap();
        assert!(json.contains("\"tokenizer\": \"gpt2\""), "{json}");

        // A second, smaller run into the same directory leaves no stale shards behind.
        let opts = PrepareOptions {
            val_fraction: 0.0,
            ..opts
        };
        let report = prepare(&[b], &out, &opts, &mut |_, _| {}).unwrap();
        assert!(report.val_shards.is_empty());
        let mut names: Vec<String> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["dataset.json", "train_000000.bin"]);
    }

    #[test]
    fn prepare_errors() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let opts = PrepareOptions {
            tokenizer: TokenizerKind::Byte,
            val_fraction: 0.1,
            shard_tokens: 100,
        };
        let run = |inputs: &[PathBuf], opts: &PrepareOptions| {
            prepare(inputs, &out, opts, &mut |_, _| {})
                .unwrap_err()
                .to_string()
        };

        let missing = dir.path().join("missing.txt");
        assert!(run(&[missing], &opts).contains("missing.txt"));

        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "").unwrap();
        let err = run(&[empty], &opts);
        assert!(err.contains("empty.txt") && err.contains("empty"), "{err}");

        let bad = dir.path().join("bad.txt");
        std::fs::write(&bad, b"hello \xff world").unwrap();
        let err = run(&[bad], &opts);
        assert!(
            err.contains("bad.txt") && err.contains("UTF-8 at byte offset 6"),
            "{err}"
        );

        let cut = dir.path().join("cut.txt");
        std::fs::write(&cut, "ok \u{00e9}".as_bytes().split_last().unwrap().1).unwrap();
        assert!(run(&[cut], &opts).contains("byte offset 3"));

        let good = dir.path().join("good.txt");
        std::fs::write(&good, "some text").unwrap();
        for f in [1.0, -0.1, f64::NAN] {
            let err = run(
                std::slice::from_ref(&good),
                &PrepareOptions {
                    val_fraction: f,
                    ..opts.clone()
                },
            );
            assert!(err.contains("val_fraction"), "{err}");
        }
        let err = run(
            &[good],
            &PrepareOptions {
                shard_tokens: 0,
                ..opts.clone()
            },
        );
        assert!(err.contains("shard_tokens"), "{err}");

        let tiny = dir.path().join("tiny.txt");
        std::fs::write(&tiny, "a").unwrap();
        let err = run(
            &[tiny],
            &PrepareOptions {
                val_fraction: 0.5,
                ..opts
            },
        );
        assert!(
            err.contains("tiny.txt") && err.contains("no training tokens"),
            "{err}"
        );
    }
}
