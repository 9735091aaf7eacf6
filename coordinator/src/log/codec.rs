//! bincode 2 (serde) encoding of log entries and snapshots, with errors that say which entry.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::StoreError;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

pub fn encode<T: Serialize>(value: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    bincode::serde::encode_to_vec(value, config()).map_err(|e| StoreError::Encode {
        what: what.to_string(),
        msg: e.to_string(),
    })
}

/// Decodes a whole value; trailing bytes are an error too (a torn or mixed-up entry).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, read) =
        bincode::serde::decode_from_slice::<T, _>(bytes, config()).map_err(|e| e.to_string())?;
    if read != bytes.len() {
        return Err(format!(
            "{} trailing bytes after a {read}-byte value",
            bytes.len() - read
        ));
    }
    Ok(value)
}
