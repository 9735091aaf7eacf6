//! The rendezvous a unique id names: a random token and the path of the Unix socket rank 0
//! listens on, in the 128 bytes of `ncclUniqueId`.
//!
//! Layout: `CVNCCLE1` (8 bytes), the token (16), the path's length (u16, little-endian), the
//! path, zeros. The path is a random name (not the token, which ranks prove they hold in their
//! hello) in the temporary directory of the process that made the id (`/tmp` when that is
//! relative or too long for a socket address), so every rank finds it whatever its own
//! `TMPDIR`, and no listener has to exist before rank 0 joins: ranks that come first retry
//! until it does.

use std::ffi::c_char;
use std::io::Read;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use crate::abi::UniqueId;
use crate::error::NcclError;

const MAGIC: &[u8; 8] = b"CVNCCLE1";
/// Room for the path: 128 bytes less the magic, token and length.
const MAX_PATH: usize = 128 - 8 - 16 - 2;
/// The longest path a Unix socket address holds (`sun_path` is 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RendezvousId {
    pub token: [u8; 16],
    pub path: PathBuf,
}

impl RendezvousId {
    /// A fresh id: a random token, and a socket path in this process's temporary directory.
    pub fn new() -> Result<RendezvousId, NcclError> {
        let mut random = [0u8; 32];
        std::fs::File::open("/dev/urandom")
            .and_then(|mut f| f.read_exact(&mut random))
            .map_err(|e| {
                NcclError::System(format!("reading a random token from /dev/urandom: {e}"))
            })?;
        let mut token = [0u8; 16];
        token.copy_from_slice(&random[..16]);
        let hex: String = random[16..].iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("convoy-nccl-{hex}.sock");
        let dir = std::env::temp_dir();
        let path = dir.join(&name);
        let fits = |p: &Path| p.as_os_str().len() <= MAX_PATH.min(MAX_SOCKET_PATH);
        let path = if dir.is_absolute() && fits(&path) {
            path
        } else {
            Path::new("/tmp").join(name)
        };
        Ok(RendezvousId { token, path })
    }

    pub fn encode(&self) -> Result<UniqueId, NcclError> {
        let path = self.path.as_os_str().as_bytes();
        if path.len() > MAX_PATH {
            return Err(NcclError::InvalidArgument(format!(
                "rendezvous path {} is longer than {MAX_PATH} bytes",
                self.path.display()
            )));
        }
        let mut bytes = [0u8; 128];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..24].copy_from_slice(&self.token);
        // At most MAX_PATH (102), which fits.
        bytes[24..26].copy_from_slice(&(path.len() as u16).to_le_bytes());
        bytes[26..26 + path.len()].copy_from_slice(path);
        Ok(UniqueId {
            internal: bytes.map(|b| b as c_char),
        })
    }

    pub fn decode(id: &UniqueId) -> Result<RendezvousId, NcclError> {
        let bytes = id.internal.map(|c| c as u8);
        if &bytes[..8] != MAGIC {
            return Err(NcclError::InvalidArgument(
                "the unique id was not made by this NCCL stand-in's ncclGetUniqueId (wrong \
                 magic: all ranks must load the same libnccl)"
                    .into(),
            ));
        }
        let mut token = [0u8; 16];
        token.copy_from_slice(&bytes[8..24]);
        let len = usize::from(u16::from_le_bytes([bytes[24], bytes[25]]));
        if len == 0 || len > MAX_PATH {
            return Err(NcclError::InvalidArgument(format!(
                "the unique id holds a rendezvous path of {len} bytes"
            )));
        }
        let path = PathBuf::from(std::ffi::OsString::from_vec(bytes[26..26 + len].to_vec()));
        Ok(RendezvousId { token, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_differ() {
        let a = RendezvousId::new().unwrap();
        let b = RendezvousId::new().unwrap();
        assert_ne!(a.token, b.token);
        assert_ne!(a.path, b.path);
        assert!(a.path.is_absolute());
        assert_eq!(RendezvousId::decode(&a.encode().unwrap()).unwrap(), a);
    }

    #[test]
    fn foreign_ids_are_refused() {
        let zero = UniqueId { internal: [0; 128] };
        let e = RendezvousId::decode(&zero).unwrap_err();
        assert!(e.to_string().contains("wrong magic"), "{e}");
    }
}
