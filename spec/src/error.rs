//! The one-line errors of reading and validating a spec.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An invalid spec: the message names the file, the field, the value and what is allowed.
    #[error("invalid job spec: {0}")]
    Invalid(String),
}

impl SpecError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> SpecError {
        SpecError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
