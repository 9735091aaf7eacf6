//! convoy's training engine: what every rank runs.
pub mod data;
pub mod error;

pub use error::{EngineError, Result};
