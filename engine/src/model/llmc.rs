//! llm.c's GPT-2 checkpoint files (fp32, version 3), so weights move freely between convoy
//! and llm.c (and PyTorch through llm.c's export script).

use std::io::{BufWriter, Read, Write};
use std::path::Path;

use super::gpt::GptConfig;
use crate::error::{EngineError, Result};

pub const MODEL_MAGIC: i32 = 20240326;
/// Version 3 holds fp32 parameters; version 5 holds bf16 ones.
pub const MODEL_VERSION_FP32: i32 = 3;
const HEADER_INTS: usize = 256;

/// Reads a checkpoint: its config and the flat parameters in llm.c's order.
pub fn read(path: &Path) -> Result<(GptConfig, Vec<f32>)> {
    let bad = |msg: String| EngineError::Checkpoint {
        path: path.to_path_buf(),
        msg,
    };
    let mut file = std::fs::File::open(path).map_err(|e| EngineError::io(path, e))?;
    let file_len = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
    let mut header = [0u8; HEADER_INTS * 4];
    file.read_exact(&mut header).map_err(|_| {
        bad(format!(
            "file is {file_len} bytes, shorter than the 1024-byte llm.c header"
        ))
    })?;
    let h = |i: usize| {
        i32::from_le_bytes([
            header[4 * i],
            header[4 * i + 1],
            header[4 * i + 2],
            header[4 * i + 3],
        ])
    };
    if h(0) != MODEL_MAGIC {
        let hint = if h(0) == 20240520 {
            " (this is a token shard, not a model)"
        } else {
            ""
        };
        return Err(bad(format!(
            "bad magic {}: expected {MODEL_MAGIC} for an llm.c GPT-2 model{hint}",
            h(0)
        )));
    }
    match h(1) {
        MODEL_VERSION_FP32 => {}
        5 => {
            return Err(bad(
                "version 5 (bf16) is not supported; export an fp32 (version 3) checkpoint".into(),
            ));
        }
        v => {
            return Err(bad(format!(
                "unsupported version {v}: expected {MODEL_VERSION_FP32} (fp32)"
            )));
        }
    }
    let dim = |i: usize, name: &str| -> Result<usize> {
        usize::try_from(h(i))
            .ok()
            .filter(|&d| d > 0)
            .ok_or_else(|| bad(format!("header {name} = {} is not positive", h(i))))
    };
    let cfg = GptConfig {
        max_seq_len: dim(2, "max_seq_len")?,
        vocab_size: dim(3, "vocab_size")?,
        n_layer: dim(4, "num_layers")?,
        n_head: dim(5, "num_heads")?,
        channels: dim(6, "channels")?,
        padded_vocab_size: dim(7, "padded_vocab_size")?,
    };
    if cfg.padded_vocab_size < cfg.vocab_size || !cfg.channels.is_multiple_of(cfg.n_head) {
        return Err(bad(format!("inconsistent header: {cfg:?}")));
    }
    // Checked: the header's dimensions are the file's word, and a damaged one must not wrap
    // around into a size that happens to match.
    let Some((n, expected)) = cfg.checked_num_params().and_then(|n| {
        let bytes = n.checked_mul(4)?.checked_add(HEADER_INTS * 4)?;
        Some((n, u64::try_from(bytes).ok()?))
    }) else {
        return Err(bad(format!(
            "the header's dimensions overflow (a damaged header?): {cfg:?}"
        )));
    };
    if file_len != expected {
        return Err(bad(format!(
            "file is {file_len} bytes but its header describes {n} parameters ({expected} bytes): truncated or not fp32"
        )));
    }
    let mut bytes = vec![0u8; n * 4];
    file.read_exact(&mut bytes)
        .map_err(|e| EngineError::io(path, e))?;
    let params = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok((cfg, params))
}

/// Writes a checkpoint, through a temporary file and a rename so a crash never leaves a
/// half-written model where a complete one is expected.
pub fn write(path: &Path, cfg: &GptConfig, params: &[f32]) -> Result<()> {
    assert_eq!(params.len(), cfg.num_params());
    let mut header = [0i32; HEADER_INTS];
    header[..8].copy_from_slice(&[
        MODEL_MAGIC,
        MODEL_VERSION_FP32,
        to_i32(cfg.max_seq_len),
        to_i32(cfg.vocab_size),
        to_i32(cfg.n_layer),
        to_i32(cfg.n_head),
        to_i32(cfg.channels),
        to_i32(cfg.padded_vocab_size),
    ]);
    let tmp = path.with_extension("tmp");
    let io = |e| EngineError::io(&tmp, e);
    let mut out = BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
    for x in header {
        out.write_all(&x.to_le_bytes()).map_err(io)?;
    }
    for x in params {
        out.write_all(&x.to_le_bytes()).map_err(io)?;
    }
    let file = out.into_inner().map_err(|e| io(e.into_error()))?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| EngineError::io(path, e))
}

fn to_i32(x: usize) -> i32 {
    i32::try_from(x).expect("model dimensions fit in an i32")
}

/// Checks that a checkpoint's config is the one a spec asks for, naming the first difference.
pub fn check_matches(path: &Path, found: &GptConfig, wanted: &GptConfig) -> Result<()> {
    let fields = [
        ("n_layer", found.n_layer, wanted.n_layer),
        ("n_head", found.n_head, wanted.n_head),
        ("n_embd", found.channels, wanted.channels),
        ("context", found.max_seq_len, wanted.max_seq_len),
        ("vocab_size", found.vocab_size, wanted.vocab_size),
        (
            "padded_vocab_size",
            found.padded_vocab_size,
            wanted.padded_vocab_size,
        ),
    ];
    for (name, f, w) in fields {
        if f != w {
            return Err(EngineError::Checkpoint {
                path: path.to_path_buf(),
                msg: format!("checkpoint has {name} = {f} but the spec's model has {w}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> GptConfig {
        GptConfig {
            max_seq_len: 8,
            vocab_size: 10,
            padded_vocab_size: 16,
            n_layer: 2,
            n_head: 2,
            channels: 4,
        }
    }

    #[test]
    fn round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        let cfg = tiny();
        let params: Vec<f32> = (0..cfg.num_params()).map(|i| i as f32 * 0.5).collect();
        write(&path, &cfg, &params).unwrap();
        let (cfg2, params2) = read(&path).unwrap();
        assert_eq!(cfg, cfg2);
        assert_eq!(params, params2);

        // Truncated.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        // Wrong magic (a token shard).
        let mut shard = bytes.clone();
        shard[..4].copy_from_slice(&20240520i32.to_le_bytes());
        std::fs::write(&path, &shard).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(
            err.contains("bad magic") && err.contains("token shard"),
            "{err}"
        );
        // Config mismatch names the field.
        let other = GptConfig { n_layer: 3, ..cfg };
        let err = check_matches(&path, &cfg, &other).unwrap_err().to_string();
        assert!(err.contains("n_layer = 2") && err.contains("3"), "{err}");
    }

    /// Dimensions whose product overflows (the sizes a damaged header holds) are an error, not
    /// a panic or a wrapped size that might match the file.
    #[test]
    fn a_header_whose_dimensions_overflow_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.bin");
        let cfg = tiny();
        let params = vec![0.0f32; cfg.num_params()];
        write(&path, &cfg, &params).unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        for (i, v) in [(4, i32::MAX), (6, 1 << 30), (5, 1 << 30)] {
            bytes[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        std::fs::write(&path, &bytes).unwrap();
        let err = read(&path).unwrap_err().to_string();
        assert!(err.contains("dimensions overflow"), "{err}");
    }
}
