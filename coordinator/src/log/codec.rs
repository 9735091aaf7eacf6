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

/// The most one log entry's strings may claim while it is decoded: far above any real entry
/// (a spec is at most 1 MiB), far below what a damaged length prefix claims.
const ENTRY_LIMIT: usize = 64 << 20;

/// Decodes one log entry; a damaged length prefix is an error, not an attempt to allocate it.
pub fn decode_entry<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, read) =
        bincode::serde::decode_from_slice::<T, _>(bytes, config().with_limit::<ENTRY_LIMIT>())
            .map_err(|e| e.to_string())?;
    whole(bytes, read)?;
    Ok(value)
}

/// Decodes a whole value; trailing bytes are an error too (a torn or mixed-up entry).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let (value, read) =
        bincode::serde::decode_from_slice::<T, _>(bytes, config()).map_err(|e| e.to_string())?;
    whole(bytes, read)?;
    Ok(value)
}

fn whole(bytes: &[u8], read: usize) -> Result<(), String> {
    if read != bytes.len() {
        return Err(format!(
            "{} trailing bytes after a {read}-byte value",
            bytes.len() - read
        ));
    }
    Ok(())
}
