//! Training data: llm.c token shards, tokenizers, the text-to-shard preparation tool and
//! tabular (CSV) classification data, each with a loader whose position can be saved and
//! restored exactly.

pub mod loader;
pub mod open;
pub mod prepare;
pub mod shard;
pub mod tabular;
pub mod tokenizer;
