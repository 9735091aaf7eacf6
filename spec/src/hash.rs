//! A fingerprint of the settings a checkpoint depends on, so a resume under a changed spec is
//! refused instead of silently continuing a different job.

use serde_json::Value;
use xxhash_rust::xxh3::xxh3_64;

use crate::JobSpec;

/// Top-level spec keys left out of [`JobSpec::resume_hash`].
const RESUME_MAY_CHANGE: [&str; 6] = ["steps", "checkpoint", "eval", "name", "threads", "sample"];

impl JobSpec {
    /// The xxh3-64 hash of the spec's canonical form (JSON with sorted keys and unset
    /// optional fields dropped), leaving out what a resumed job may legitimately change:
    /// `steps` (to extend a run), `[checkpoint]` and `[eval]` (how often it saves and
    /// measures), `name`, `threads` (results are bit-identical on any thread count, and a
    /// worker may override it) and `[sample]` (text generated at the end). None of these
    /// alter the parameters, optimizer state or data order a
    /// checkpoint holds; every other field (model, data, optimizer, schedule, seed, batch
    /// shape) does or may, so a state only resumes under a spec with the same hash. That
    /// includes `precision` and `[kernels]`: another GEMM or attention implementation rounds
    /// differently, and a resume is promised bit-exact.
    ///
    /// Dropping unset optional fields keeps the hash of existing specs when a new optional
    /// field is added. (The schedule's step count is `steps`, so extending a cosine schedule
    /// changes the learning rates after the resume point; that is the intended meaning of
    /// "train longer".)
    pub fn resume_hash(&self) -> u64 {
        // Serialization only fails for a path that is not UTF-8; its debug form still
        // distinguishes it.
        let mut value = serde_json::to_value(self).unwrap_or_else(|_| {
            let mut s = self.clone();
            s.steps = 0;
            s.checkpoint = Default::default();
            s.eval = Default::default();
            Value::String(format!("{s:?}"))
        });
        if let Value::Object(map) = &mut value {
            for key in RESUME_MAY_CHANGE {
                map.remove(key);
            }
        }
        let mut canonical = String::new();
        write_canonical(&value, &mut canonical);
        xxh3_64(canonical.as_bytes())
    }
}

/// JSON with object keys sorted and null members left out, whatever order serde_json's map
/// keeps (feature unification can turn on `preserve_order`): one text per value.
pub fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().filter(|(_, v)| !v.is_null()).collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GptSpec, ModelSpec};

    fn base() -> JobSpec {
        let text = format!(
            "{}[optimizer]\nlr = 3e-3\n",
            convoy_testkit::specs::GPT_TEXT
        );
        JobSpec::parse(&text, "job.toml").expect("valid spec")
    }

    #[test]
    fn steps_checkpoint_and_eval_keep_the_hash() {
        let a = base();
        let mut b = a.clone();
        b.steps = 1000;
        b.checkpoint.interval = 50;
        b.eval.interval = 7;
        b.eval.batches = 3;
        assert_eq!(a.resume_hash(), b.resume_hash());
        assert_eq!(
            a.resume_hash(),
            base().resume_hash(),
            "stable across parses"
        );
    }

    #[test]
    fn model_optimizer_and_data_change_the_hash() {
        let a = base();
        let mut lr = a.clone();
        lr.optimizer.lr = 1e-3;
        assert_ne!(a.resume_hash(), lr.resume_hash());
        let mut model = a.clone();
        if let ModelSpec::Gpt(GptSpec { n_layer, .. }) = &mut model.model {
            *n_layer = 3;
        }
        assert_ne!(a.resume_hash(), model.resume_hash());
        let mut seed = a.clone();
        seed.seed += 1;
        assert_ne!(a.resume_hash(), seed.resume_hash());
        let mut data = a.clone();
        data.resolve_paths(std::path::Path::new("/elsewhere"));
        assert_ne!(a.resume_hash(), data.resume_hash());
    }

    /// Checkpoints written by earlier releases carry their spec's hash: a field added to the
    /// spec with its default must not change it, or every stored state would stop resuming.
    #[test]
    fn the_hash_of_a_spec_is_pinned() {
        assert_eq!(base().resume_hash(), 0x7ca4_9e55_eec3_f138);
    }

    #[test]
    fn default_kernels_keep_the_hash_and_others_change_it() {
        let a = base();
        let mut explicit = a.clone();
        explicit.kernels = crate::KernelSpec {
            gemm: crate::GemmKernels::Convoy,
            attention: crate::AttentionKernels::Materialized,
        };
        assert_eq!(a.resume_hash(), explicit.resume_hash());
        let mut lt = a.clone();
        lt.kernels.gemm = crate::GemmKernels::Cublaslt;
        assert_ne!(a.resume_hash(), lt.resume_hash());
    }
}
