//! Exports a [`TrainState`] to formats other tools read: llm.c's GPT-2 checkpoint and
//! safetensors. The state describes its own tensors, so no spec, data or model is rebuilt.
//!
//! Tensors are written as the buffer holds them, only sliced: names follow HuggingFace where
//! a tensor has an equivalent, but layouts are convoy's (see `model::gpt`'s config module for
//! how a GPT differs from HF's, e.g. `[out, in]` linear weights).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use safetensors::tensor::{Dtype, View};

use crate::error::{EngineError, Result};
use crate::model::llmc;
use crate::train::TrainState;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// llm.c's fp32 GPT-2 checkpoint (GPT models only).
    Llmc,
    /// A safetensors file of every tensor, F32 little-endian, under its name.
    Safetensors,
}

/// A format name that is not one of [`ExportFormat`]'s.
#[derive(Debug, thiserror::Error)]
#[error("unknown export format {0:?}: expected llmc or safetensors")]
pub struct UnknownExportFormat(pub String);

impl FromStr for ExportFormat {
    type Err = UnknownExportFormat;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "llmc" => Ok(ExportFormat::Llmc),
            "safetensors" => Ok(ExportFormat::Safetensors),
            _ => Err(UnknownExportFormat(s.to_string())),
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ExportFormat::Llmc => "llmc",
            ExportFormat::Safetensors => "safetensors",
        })
    }
}

/// Writes the parameters of `state` to `path` in `format`, through a temporary file and a
/// rename so a failed export never leaves a partial file where a complete one is expected.
pub fn export(state: &TrainState, format: ExportFormat, path: &Path) -> Result<()> {
    let bad = |msg: String| EngineError::Export {
        path: path.to_path_buf(),
        msg,
    };
    match format {
        ExportFormat::Llmc => {
            let cfg = state.gpt.as_ref().ok_or_else(|| {
                bad(format!(
                    "llm.c export needs a GPT model; this checkpoint is {}",
                    state.model
                ))
            })?;
            if state.params.len() != cfg.num_params() {
                return Err(bad(format!(
                    "the checkpoint holds {} parameters but its GPT config needs {}",
                    state.params.len(),
                    cfg.num_params()
                )));
            }
            llmc::write(path, cfg, &state.params)
        }
        ExportFormat::Safetensors => write_safetensors(state, path).map_err(bad),
    }
}

/// One tensor's slice of the parameters, converted to little-endian bytes only when the
/// writer asks, so at most one tensor is copied at a time.
struct F32View<'a> {
    shape: &'a [usize],
    data: &'a [f32],
}

impl View for F32View<'_> {
    fn dtype(&self) -> Dtype {
        Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Owned(self.data.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    fn data_len(&self) -> usize {
        self.data.len() * 4
    }
}

fn write_safetensors(state: &TrainState, path: &Path) -> Result<(), String> {
    if state.tensors.is_empty() {
        return Err("the checkpoint describes no tensors".into());
    }
    let n = state.params.len();
    let mut views = Vec::with_capacity(state.tensors.len());
    for t in &state.tensors {
        let data = state.params.get(t.range()).ok_or_else(|| {
            format!(
                "tensor {} ({:?} at {}) lies outside the {n} parameters",
                t.name, t.shape, t.offset
            )
        })?;
        views.push((
            t.name.as_str(),
            F32View {
                shape: &t.shape,
                data,
            },
        ));
    }
    let metadata = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("convoy_step".to_string(), state.step.to_string()),
        ("convoy_model".to_string(), state.model.clone()),
    ]);
    let mut bytes = safetensors::tensor::serialize(views, Some(metadata))
        .map_err(|e| format!("encoding safetensors: {e}"))?;
    canonical_header(&mut bytes)?;
    let tmp = path.with_extension("tmp");
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        use std::io::Write;
        f.write_all(&bytes)?;
        f.sync_all()
    });
    written
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            e.to_string()
        })
}

/// Rewrites the JSON header with sorted keys: the crate writes its metadata from a `HashMap`,
/// whose order changes from run to run, and equal checkpoints must export to equal files (users
/// compare them by hash). The sorted header has the same length, so offsets stay valid.
fn canonical_header(bytes: &mut [u8]) -> Result<(), String> {
    let bad = || "safetensors header: unexpected layout".to_string();
    let n = u64::from_le_bytes(
        bytes
            .get(..8)
            .ok_or_else(bad)?
            .try_into()
            .map_err(|_| bad())?,
    );
    let end = 8usize
        .checked_add(n as usize)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(bad)?;
    let header = &bytes[8..end];
    let value: serde_json::Value = serde_json::from_slice(header).map_err(|e| e.to_string())?;
    let mut sorted = String::new();
    crate::spec::write_canonical(&value, &mut sorted);
    if sorted.len() > header.len() {
        return Err(bad());
    }
    let mut padded = sorted.into_bytes();
    padded.resize(header.len(), b' ');
    bytes[8..end].copy_from_slice(&padded);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn format_names_parse_and_unknown_ones_list_the_valid_names() {
        assert_eq!(
            "llmc".parse::<ExportFormat>().ok(),
            Some(ExportFormat::Llmc)
        );
        assert_eq!(
            "safetensors".parse::<ExportFormat>().ok(),
            Some(ExportFormat::Safetensors)
        );
        for f in [ExportFormat::Llmc, ExportFormat::Safetensors] {
            assert_eq!(f.to_string().parse::<ExportFormat>().ok(), Some(f));
        }
        let e = "x".parse::<ExportFormat>().unwrap_err().to_string();
        assert_eq!(
            e,
            "unknown export format \"x\": expected llmc or safetensors"
        );
    }
}
