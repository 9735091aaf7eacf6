//! Tokenizers: raw bytes (vocabulary 256, for character-level toys) and GPT-2's BPE, taken from
//! tiktoken-rs's embedded `r50k_base` tables so no download is ever needed at run time.

use std::sync::OnceLock;

use tiktoken_rs::CoreBPE;

use crate::error::{EngineError, Result};

pub use convoy_spec::TokenizerKind;

const GPT2_VOCAB_SIZE: usize = 50257;
const GPT2_EOT: u32 = 50256;

/// Built once per process: parsing the embedded vocabulary takes a noticeable fraction of a
/// second, and every tokenizer instance can share the same tables.
static GPT2_BPE: OnceLock<CoreBPE> = OnceLock::new();

#[derive(Clone)]
pub struct Tokenizer {
    kind: TokenizerKind,
    bpe: Option<&'static CoreBPE>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .finish()
    }
}

impl Tokenizer {
    pub fn new(kind: TokenizerKind) -> Result<Self> {
        let bpe = match kind {
            TokenizerKind::Byte => None,
            TokenizerKind::Gpt2 => Some(gpt2_bpe()?),
        };
        Ok(Tokenizer { kind, bpe })
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    pub fn vocab_size(&self) -> usize {
        match self.kind {
            TokenizerKind::Byte => 256,
            TokenizerKind::Gpt2 => GPT2_VOCAB_SIZE,
        }
    }

    /// The document separator that prepared data starts each document with, as llm.c does.
    pub fn eot(&self) -> Option<u32> {
        match self.kind {
            TokenizerKind::Byte => None,
            TokenizerKind::Gpt2 => Some(GPT2_EOT),
        }
    }

    /// Encodes text as ordinary text: a literal `<|endoftext|>` in the input is tokenized as
    /// its characters, so data can never inject document boundaries.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        match self.bpe {
            Some(bpe) => bpe.encode_ordinary(text),
            None => text.bytes().map(u32::from).collect(),
        }
    }

    /// Decodes for display: byte sequences that are not valid UTF-8 (a sample cut mid-character)
    /// become U+FFFD, and ids outside the vocabulary (an untrained model can emit them when its
    /// output layer is padded) appear as `<|unk:ID|>` rather than failing.
    pub fn decode(&self, tokens: &[u32]) -> String {
        let mut bytes = Vec::with_capacity(tokens.len() * 2);
        match self.bpe {
            Some(bpe) => match bpe.decode_bytes(tokens) {
                Ok(b) => bytes = b,
                Err(_) => {
                    for &t in tokens {
                        match bpe.decode_bytes(&[t]) {
                            Ok(b) => bytes.extend_from_slice(&b),
                            Err(_) => push_unknown(&mut bytes, t),
                        }
                    }
                }
            },
            None => {
                for &t in tokens {
                    match u8::try_from(t) {
                        Ok(b) => bytes.push(b),
                        Err(_) => push_unknown(&mut bytes, t),
                    }
                }
            }
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

fn push_unknown(bytes: &mut Vec<u8>, token: u32) {
    bytes.extend_from_slice(format!("<|unk:{token}|>").as_bytes());
}

fn gpt2_bpe() -> Result<&'static CoreBPE> {
    if let Some(bpe) = GPT2_BPE.get() {
        return Ok(bpe);
    }
    // Two threads may both build it; one wins and the other's copy is dropped.
    let bpe = tiktoken_rs::r50k_base().map_err(|e| {
        EngineError::data(
            "r50k_base.tiktoken",
            format!("cannot load the embedded GPT-2 vocabulary: {e}"),
        )
    })?;
    Ok(GPT2_BPE.get_or_init(|| bpe))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_round_trip() {
        let t = Tokenizer::new(TokenizerKind::Byte).unwrap();
        assert_eq!(t.kind(), TokenizerKind::Byte);
        assert_eq!(t.vocab_size(), 256);
        assert_eq!(t.eot(), None);
        let text = "Hello, wörld! <|endoftext|>\n";
        let ids = t.encode(text);
        assert_eq!(ids.len(), text.len());
        assert_eq!(&ids[..2], &[72, 101]);
        assert_eq!(t.decode(&ids), text);
        // Half of "ö" and an id outside the vocabulary.
        assert_eq!(t.decode(&[0xc3, 65, 300]), "\u{fffd}A<|unk:300|>");
    }

    #[test]
    fn gpt2_known_ids_and_round_trip() {
        let t = Tokenizer::new(TokenizerKind::Gpt2).unwrap();
        assert_eq!(t.kind(), TokenizerKind::Gpt2);
        assert_eq!(t.vocab_size(), 50257);
        assert_eq!(t.eot(), Some(50256));
        assert_eq!(t.encode("Hello world"), [15496, 995]);
        assert_eq!(t.decode(&[15496, 995]), "Hello world");
        let text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n  ünïcode ✓";
        assert_eq!(t.decode(&t.encode(text)), text);
        // Special tokens in the input are plain text; the EOT id still decodes.
        assert!(!t.encode("<|endoftext|>").contains(&50256));
        assert_eq!(t.decode(&[50256]), "<|endoftext|>");
        assert_eq!(t.decode(&[15496, 60000, 995]), "Hello<|unk:60000|> world");
    }

    #[test]
    fn kind_serializes_lowercase() {
        assert_eq!(
            serde_json::to_string(&TokenizerKind::Gpt2).unwrap(),
            "\"gpt2\""
        );
        assert_eq!(
            serde_json::from_str::<TokenizerKind>("\"byte\"").unwrap(),
            TokenizerKind::Byte
        );
    }
}
