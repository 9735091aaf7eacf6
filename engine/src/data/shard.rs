//! llm.c token shards: a 1024-byte header of 256 little-endian `i32`s (magic, version, token
//! count, then zeros) followed by the tokens as little-endian `u16`. Shards are read through a
//! memory map so a multi-gigabyte dataset costs no heap and opens instantly; only the pages a
//! batch touches are ever read.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::error::{EngineError, Result};

// The token view reinterprets the mapped bytes as `u16` in place, which is only correct when the
// host byte order matches the file's.
#[cfg(target_endian = "big")]
compile_error!(
    "convoy reads llm.c token shards (little-endian) in place and needs a little-endian target"
);

/// Identifies an llm.c token shard (`dev/data/data_common.py`).
pub const SHARD_MAGIC: i32 = 20240520;
/// Version 1 stores GPT-2 style `u16` tokens; llm.c's version 2 (`u32` tokens for LLaMA 3) is not
/// supported.
pub const SHARD_VERSION: i32 = 1;
pub const SHARD_HEADER_BYTES: usize = 1024;

const HEADER_INTS: usize = SHARD_HEADER_BYTES / 4;
/// Magic numbers of the other llm.c file kinds, so a mix-up is named instead of reported as
/// garbage.
const LLMC_MODEL_MAGIC: i32 = 20240326;
const LLMC_TOKENIZER_MAGIC: i32 = 20240328;

/// An open, validated token shard.
pub struct TokenShard {
    path: PathBuf,
    map: Mmap,
    len: usize,
}

impl TokenShard {
    /// Opens and validates a shard: the header must be intact and the token count must agree
    /// with the file size exactly, so a truncated download is caught here rather than as garbage
    /// batches mid-run.
    pub fn open(path: &Path) -> Result<Self> {
        let file = super::open::open_regular(path)?;
        let size = file.metadata().map_err(|e| EngineError::io(path, e))?.len();
        if size < SHARD_HEADER_BYTES as u64 {
            return Err(EngineError::data(
                path,
                format!(
                    "not an llm.c token shard: the file is {size} bytes, shorter than the {SHARD_HEADER_BYTES}-byte header"
                ),
            ));
        }
        // SAFETY: the map is read-only. Another process truncating or rewriting the file while
        // it is mapped is outside what we can guard against; `write_shard` replaces files by
        // rename, which leaves existing maps of the old file intact.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| EngineError::io(path, e))?;
        let header: Vec<i32> = map[..SHARD_HEADER_BYTES]
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let (magic, version, count) = (header[0], header[1], header[2]);
        if magic != SHARD_MAGIC {
            let what = match magic {
                LLMC_MODEL_MAGIC => " (that is an llm.c model checkpoint, not a token shard)",
                LLMC_TOKENIZER_MAGIC => " (that is an llm.c tokenizer file, not a token shard)",
                _ => "",
            };
            return Err(EngineError::data(
                path,
                format!(
                    "not an llm.c token shard: magic number is {magic}{what}, expected {SHARD_MAGIC}"
                ),
            ));
        }
        if version != SHARD_VERSION {
            let what = if version == 2 {
                " (uint32 tokens, as llm.c writes for LLaMA 3)"
            } else {
                ""
            };
            return Err(EngineError::data(
                path,
                format!(
                    "unsupported token shard version {version}{what}; only version {SHARD_VERSION} (uint16 tokens) is supported"
                ),
            ));
        }
        let len = usize::try_from(count).map_err(|_| {
            EngineError::data(
                path,
                format!("token shard header has a negative token count ({count})"),
            )
        })?;
        if len == 0 {
            return Err(EngineError::data(
                path,
                "token shard is empty (header says 0 tokens)",
            ));
        }
        let expected = SHARD_HEADER_BYTES as u64 + 2 * len as u64;
        if size != expected {
            let what = if size < expected {
                "truncated"
            } else {
                "trailing bytes after the tokens"
            };
            return Err(EngineError::data(
                path,
                format!(
                    "token shard header says {len} tokens, so the file should be {expected} bytes, but it is {size} bytes ({what})"
                ),
            ));
        }
        if map.as_ptr().align_offset(std::mem::align_of::<u16>()) != 0 {
            // Unreachable in practice (maps are page-aligned), but `tokens` relies on it.
            return Err(EngineError::data(path, "memory map is not 2-byte aligned"));
        }
        Ok(TokenShard {
            path: path.to_path_buf(),
            map,
            len,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Always false: `open` rejects empty shards. Present because `len` is.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The tokens, straight from the page cache.
    pub fn tokens(&self) -> &[u16] {
        let bytes = &self.map[SHARD_HEADER_BYTES..SHARD_HEADER_BYTES + 2 * self.len];
        // SAFETY: `bytes` is in bounds (checked against the file size in `open`), 2-byte aligned
        // (page-aligned map plus a 1024-byte offset, checked in `open`), every bit pattern is a
        // valid u16, the host is little-endian (compile_error above), and the slice borrows
        // `self.map`, so it cannot outlive the mapping.
        unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<u16>(), self.len) }
    }
}

/// Writes a shard so that `path` is either absent, the previous file, or the complete new
/// shard: the data goes to a temporary file in the same directory, is synced, then renamed over
/// `path`.
pub fn write_shard(path: &Path, tokens: &[u16]) -> Result<()> {
    if tokens.is_empty() {
        return Err(EngineError::data(
            path,
            "refusing to write a token shard with no tokens",
        ));
    }
    let count = i32::try_from(tokens.len()).map_err(|_| {
        EngineError::data(
            path,
            format!(
                "{} tokens do not fit a shard header (at most {})",
                tokens.len(),
                i32::MAX
            ),
        )
    })?;
    write_atomically(path, |w| {
        let mut header = [0i32; HEADER_INTS];
        header[0] = SHARD_MAGIC;
        header[1] = SHARD_VERSION;
        header[2] = count;
        for v in header {
            w.write_all(&v.to_le_bytes())?;
        }
        for t in tokens {
            w.write_all(&t.to_le_bytes())?;
        }
        Ok(())
    })
}

/// Runs `write` against a temporary file next to `path`, then syncs and renames it over `path`,
/// removing the temporary file on failure. Shared by every writer in the data layer so no crash
/// leaves a half-written file under a real name.
pub(crate) fn write_atomically(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| EngineError::data(path, "output path has no file name"))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::with_capacity(1 << 20, file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        EngineError::io(path, e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw_shard(dir: &Path, name: &str, header: &[i32], tokens: &[u16]) -> PathBuf {
        let mut bytes = vec![0u8; SHARD_HEADER_BYTES];
        for (i, v) in header.iter().enumerate() {
            bytes[4 * i..4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
        for t in tokens {
            bytes.extend_from_slice(&t.to_le_bytes());
        }
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn open_err(path: &Path) -> String {
        match TokenShard::open(path) {
            Ok(_) => panic!("{} opened but should not", path.display()),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        let tokens: Vec<u16> = (0..5000u32).map(|i| (i * 7919 % 65536) as u16).collect();
        write_shard(&path, &tokens).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(bytes.len(), SHARD_HEADER_BYTES + 2 * tokens.len());
        assert_eq!(&bytes[0..4], &SHARD_MAGIC.to_le_bytes());
        assert_eq!(&bytes[4..8], &SHARD_VERSION.to_le_bytes());
        assert_eq!(&bytes[8..12], &5000i32.to_le_bytes());
        assert!(bytes[12..SHARD_HEADER_BYTES].iter().all(|&b| b == 0));
        assert_eq!(
            &bytes[SHARD_HEADER_BYTES..SHARD_HEADER_BYTES + 2],
            &tokens[0].to_le_bytes()
        );

        let shard = TokenShard::open(&path).unwrap();
        assert_eq!(shard.len(), 5000);
        assert_eq!(shard.path(), path);
        assert_eq!(shard.tokens(), &tokens[..]);
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn write_replaces_an_existing_shard_and_rejects_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.bin");
        write_shard(&path, &[1, 2, 3]).unwrap();
        write_shard(&path, &[4, 5]).unwrap();
        assert_eq!(TokenShard::open(&path).unwrap().tokens(), &[4, 5]);
        let err = write_shard(&dir.path().join("e.bin"), &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("e.bin") && err.contains("no tokens"), "{err}");
    }

    #[test]
    fn wrong_magic() {
        let dir = tempfile::tempdir().unwrap();
        let p = raw_shard(dir.path(), "m.bin", &[1234, 1, 2], &[1, 2]);
        let err = open_err(&p);
        assert!(
            err.contains("m.bin") && err.contains("1234") && err.contains("20240520"),
            "{err}"
        );
        let p = raw_shard(dir.path(), "model.bin", &[20240326, 3, 2], &[1, 2]);
        let err = open_err(&p);
        assert!(
            err.contains("model checkpoint") && err.contains("20240326"),
            "{err}"
        );
    }

    #[test]
    fn wrong_version() {
        let dir = tempfile::tempdir().unwrap();
        let p = raw_shard(dir.path(), "v.bin", &[SHARD_MAGIC, 2, 2], &[1, 2]);
        let err = open_err(&p);
        assert!(
            err.contains("v.bin") && err.contains("version 2") && err.contains("uint32"),
            "{err}"
        );
    }

    #[test]
    fn shorter_than_header() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("short.bin");
        std::fs::write(&p, [0u8; 100]).unwrap();
        let err = open_err(&p);
        assert!(
            err.contains("short.bin") && err.contains("100 bytes") && err.contains("header"),
            "{err}"
        );
        let p = dir.path().join("zero.bin");
        std::fs::write(&p, []).unwrap();
        assert!(open_err(&p).contains("0 bytes"));
    }

    #[test]
    fn truncated() {
        let dir = tempfile::tempdir().unwrap();
        let p = raw_shard(
            dir.path(),
            "t.bin",
            &[SHARD_MAGIC, SHARD_VERSION, 10],
            &[1, 2, 3],
        );
        let err = open_err(&p);
        assert!(
            err.contains("t.bin")
                && err.contains("10 tokens")
                && err.contains("1044 bytes")
                && err.contains("1030 bytes")
                && err.contains("truncated"),
            "{err}"
        );
        let p = raw_shard(
            dir.path(),
            "long.bin",
            &[SHARD_MAGIC, SHARD_VERSION, 1],
            &[1, 2],
        );
        assert!(open_err(&p).contains("trailing bytes"));
    }

    #[test]
    fn empty_and_negative_count() {
        let dir = tempfile::tempdir().unwrap();
        let p = raw_shard(dir.path(), "e.bin", &[SHARD_MAGIC, SHARD_VERSION, 0], &[]);
        let err = open_err(&p);
        assert!(err.contains("e.bin") && err.contains("empty"), "{err}");
        let p = raw_shard(dir.path(), "n.bin", &[SHARD_MAGIC, SHARD_VERSION, -5], &[]);
        assert!(open_err(&p).contains("negative"));
    }

    #[test]
    fn missing_file_is_an_io_error_naming_it() {
        let err = open_err(Path::new("/nonexistent/dir/x.bin"));
        assert!(err.starts_with("/nonexistent/dir/x.bin:"), "{err}");
    }
}
