//! The acknowledged high-water mark: the last log index the coordinator acknowledged and the
//! number of job ids it had issued, kept in a small file beside the log and outside sled.
//!
//! sled recovers a damaged file by dropping everything after the damage, silently; a
//! coordinator that then served what was left would forget acknowledged jobs and hand their
//! ids out again. The mark is written after every committed batch, before any reply, so at
//! start a log that ends before the mark (or a state that issued fewer job ids) has lost
//! acknowledged entries, and the coordinator refuses to start instead of serving less.
//!
//! The file holds two slots written in turn, each a [`convoy_envelope`] record: a write torn by
//! a crash damages one slot and the other still holds the previous mark.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use convoy_envelope::{Header, Kind};

use super::Index;
use crate::error::StoreError;

/// What the coordinator had acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mark {
    /// The last log index whose effects were replied to.
    pub index: Index,
    /// Job ids issued so far (the highest id); never fewer after a restart.
    pub jobs_issued: u64,
}

const KIND: Kind = Kind(*b"MARK");
const VERSION: u16 = 1;
const SLOT: u64 = 64;

/// The mark file, open for writing.
pub struct MarkFile {
    path: PathBuf,
    file: File,
    /// The slot the next write goes to: never the one holding the newest mark.
    next_slot: u64,
}

impl MarkFile {
    /// Opens (creating if needed) the file at `path` and reads the newest intact mark in it.
    /// A file whose every slot is damaged is an error: the mark cannot be trusted, and nor can
    /// a start without it.
    pub fn open(path: &Path) -> Result<(MarkFile, Option<Mark>), StoreError> {
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| StoreError::Io { what, source }
        };
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io("open"))?;
        if !existed {
            // The new file must survive a crash too: flush the directory entry.
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("sync the directory of"))?;
            }
        }
        let len = file.metadata().map_err(io("stat"))?.len();
        let mut slots = vec![];
        let mut damage = vec![];
        for slot in 0..2u64 {
            let mut buf = vec![0u8; SLOT as usize];
            let at = slot * SLOT;
            if at >= len {
                continue;
            }
            let n = usize::try_from((len - at).min(SLOT)).unwrap_or(0);
            file.read_exact_at(&mut buf[..n], at).map_err(io("read"))?;
            match decode(&buf[..n]) {
                Ok(m) => slots.push((slot, m)),
                Err(e) => damage.push(format!("slot {slot} {e}")),
            }
        }
        let newest = slots.iter().max_by_key(|(_, m)| m.index).copied();
        if newest.is_none() && len > 0 {
            return Err(StoreError::Invalid(format!(
                "the high-water mark {} is damaged ({}); it cannot say which entries were \
                 acknowledged",
                path.display(),
                damage.join("; ")
            )));
        }
        let next_slot = newest.map_or(0, |(slot, _)| 1 - slot);
        let mark = MarkFile {
            path: path.to_path_buf(),
            file,
            next_slot,
        };
        Ok((mark, newest.map(|(_, m)| m)))
    }

    /// Durably records `mark` (one write and one fdatasync of 64 bytes).
    pub fn save(&mut self, mark: Mark) -> Result<(), StoreError> {
        let io = |what: &str| {
            let what = format!("{what} {}", self.path.display());
            move |source| StoreError::Io { what, source }
        };
        let mut payload = [0u8; 16];
        payload[..8].copy_from_slice(&mark.index.to_le_bytes());
        payload[8..].copy_from_slice(&mark.jobs_issued.to_le_bytes());
        let header = Header {
            kind: KIND,
            version: VERSION,
            tag: 0,
        };
        let mut bytes = convoy_envelope::seal(header, &payload);
        bytes.resize(SLOT as usize, 0);
        self.file
            .write_all_at(&bytes, self.next_slot * SLOT)
            .map_err(io("write"))?;
        self.file.sync_data().map_err(io("sync"))?;
        self.next_slot = 1 - self.next_slot;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// One slot: an envelope of 16 bytes, then zero padding.
fn decode(slot: &[u8]) -> Result<Mark, String> {
    let len = convoy_envelope::HEADER_LEN + 16;
    let record = slot.get(..len).ok_or("is truncated")?;
    let (_, payload) =
        convoy_envelope::open(record, KIND, VERSION..=VERSION).map_err(|e| e.to_string())?;
    let word = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[at..at + 8]);
        u64::from_le_bytes(b)
    };
    Ok(Mark {
        index: word(0),
        jobs_issued: word(8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(index: Index) -> Mark {
        Mark {
            index,
            jobs_issued: index / 2,
        }
    }

    #[test]
    fn the_newest_mark_survives_a_torn_write_of_the_next() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.mark");
        let (mut f, none) = MarkFile::open(&path).expect("open");
        assert_eq!(none, None);
        for i in 1..=5 {
            f.save(m(i)).expect("save");
        }
        drop(f);
        assert_eq!(MarkFile::open(&path).expect("open").1, Some(m(5)));
        // Mark 5 went to slot 0 (1, 3, 5 in slot 0; 2, 4 in slot 1): tear slot 0.
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[20] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let (mut f, mark) = MarkFile::open(&path).expect("open");
        assert_eq!(mark, Some(m(4)));
        // The next write goes over the damaged slot, not over mark 4.
        f.save(m(6)).expect("save");
        assert_eq!(MarkFile::open(&path).expect("open").1, Some(m(6)));
    }

    #[test]
    fn a_mark_with_no_intact_slot_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("log.mark");
        std::fs::write(&path, [7u8; 128]).expect("write");
        let Err(err) = MarkFile::open(&path) else {
            panic!("a damaged mark opened")
        };
        let msg = err.to_string();
        assert!(msg.contains("log.mark") && msg.contains("damaged"), "{msg}");
    }
}
