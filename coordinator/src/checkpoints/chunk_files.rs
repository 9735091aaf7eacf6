//! Chunk bytes in plain files, one per chunk, one directory per upload:
//! `chunks/<job>/<step>-<generation>/<part>-<index>`.
//!
//! Why not sled: sled keeps large values as blob files and recovers a damaged one by dropping
//! every blob written after it, which rolled whole jobs back to older checkpoints or left them
//! with none; and the blobs of removed values stayed on disk (1.4 GB for 12.6 MB of live
//! checkpoints, see ARCHITECTURE.md). Here a damaged file damages its own checkpoint only (the
//! manifest's checksum finds it), and removing an upload's directory frees its bytes at once.
//!
//! A chunk is written to a temporary name and renamed, so a file under its final name is
//! whole; files are synced to disk when their upload commits ([`ChunkFiles::sync_upload`]),
//! before the manifest that references them is written.

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};

use super::error::CheckpointError;
use super::keys::{PartKey, Upload};
use crate::model::JobId;

pub(super) struct ChunkFiles {
    root: PathBuf,
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CheckpointError {
    let context = context.into();
    move |source| CheckpointError::Io { context, source }
}

impl ChunkFiles {
    pub(super) fn open(root: &Path) -> Result<ChunkFiles, CheckpointError> {
        std::fs::create_dir_all(root).map_err(io(format!("create {}", root.display())))?;
        Ok(ChunkFiles {
            root: root.to_path_buf(),
        })
    }

    fn job_dir(&self, job: JobId) -> PathBuf {
        self.root.join(job.0.to_string())
    }

    fn upload_dir(&self, u: Upload) -> PathBuf {
        self.job_dir(u.job)
            .join(format!("{}-{}", u.step, u.generation))
    }

    fn chunk_path(&self, key: &PartKey, index: u32) -> PathBuf {
        self.upload_dir(key.upload())
            .join(format!("{}-{index}", key.part))
    }

    /// Stores a chunk (replacing an earlier copy). Not yet synced: see the module's doc.
    pub(super) fn write(
        &self,
        key: &PartKey,
        index: u32,
        data: &[u8],
    ) -> Result<(), CheckpointError> {
        let path = self.chunk_path(key, index);
        let context = || format!("write {}", path.display());
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io(context()))?;
        }
        let tmp = path.with_extension("tmp");
        let mut f = File::create(&tmp).map_err(io(context()))?;
        f.write_all(data).map_err(io(context()))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io(context()))
    }

    /// The bytes of a chunk; `None` if there is no such file.
    pub(super) fn read(
        &self,
        key: &PartKey,
        index: u32,
    ) -> Result<Option<Vec<u8>>, CheckpointError> {
        let path = self.chunk_path(key, index);
        match std::fs::read(&path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(format!("read {}", path.display()))(e)),
        }
    }

    /// The chunk indices stored for one part, ascending.
    pub(super) fn part_indices(&self, key: &PartKey) -> Result<Vec<u32>, CheckpointError> {
        let mut out = vec![];
        for (name, _) in self.entries(&self.upload_dir(key.upload()))? {
            let parsed = name
                .split_once('-')
                .and_then(|(p, i)| Some((p.parse::<u32>().ok()?, i.parse::<u32>().ok()?)));
            if let Some((part, index)) = parsed
                && part == key.part
            {
                out.push(index);
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    /// Removes chunk `index` of a part (a stray from an earlier try cut differently).
    pub(super) fn remove(&self, key: &PartKey, index: u32) -> Result<(), CheckpointError> {
        let path = self.chunk_path(key, index);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                Err(io(format!("remove {}", path.display()))(e))
            }
            _ => Ok(()),
        }
    }

    /// Makes every chunk of `u` durable, with the directory entries that name them.
    pub(super) fn sync_upload(&self, u: Upload) -> Result<(), CheckpointError> {
        let dir = self.upload_dir(u);
        for (_, path) in self.entries(&dir)? {
            File::open(&path)
                .and_then(|f| f.sync_data())
                .map_err(io(format!("sync {}", path.display())))?;
        }
        for d in [dir.as_path(), &self.job_dir(u.job), &self.root] {
            sync_dir(d)?;
        }
        Ok(())
    }

    /// Removes every chunk of `u`; returns how many files went.
    pub(super) fn remove_upload(&self, u: Upload) -> Result<u64, CheckpointError> {
        let dir = self.upload_dir(u);
        let n = self.entries(&dir)?.len() as u64;
        match std::fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(io(format!("remove {}", dir.display()))(e));
            }
            _ => {}
        }
        // The job's directory goes with its last upload; another upload may have just
        // created a new one in it, in which case it is not empty and stays.
        let _ = std::fs::remove_dir(self.job_dir(u.job));
        Ok(n)
    }

    /// Every upload with a directory here, and the paths of entries that are not one (not
    /// written by this store).
    pub(super) fn uploads(&self) -> Result<(Vec<Upload>, Vec<PathBuf>), CheckpointError> {
        let (mut uploads, mut strangers) = (vec![], vec![]);
        for (job_name, job_path) in self.entries(&self.root)? {
            let Ok(job) = job_name.parse::<u64>() else {
                strangers.push(job_path);
                continue;
            };
            if !job_path.is_dir() {
                strangers.push(job_path);
                continue;
            }
            for (name, path) in self.entries(&job_path)? {
                let parsed = name
                    .split_once('-')
                    .and_then(|(s, g)| Some((s.parse::<u64>().ok()?, g.parse::<u64>().ok()?)));
                match parsed {
                    Some((step, generation)) if path.is_dir() => uploads.push(Upload {
                        job: JobId(job),
                        step,
                        generation,
                    }),
                    _ => strangers.push(path),
                }
            }
        }
        Ok((uploads, strangers))
    }

    /// Bytes available to unprivileged writers on the chunks' filesystem.
    pub(super) fn free_bytes(&self) -> Result<u64, CheckpointError> {
        let st = nix::sys::statvfs::statvfs(&self.root).map_err(|e| CheckpointError::Io {
            context: format!("read the free space of {}", self.root.display()),
            source: std::io::Error::from(e),
        })?;
        Ok(st.blocks_available().saturating_mul(st.fragment_size()))
    }

    /// The names and paths in `dir` (none if it does not exist).
    fn entries(&self, dir: &Path) -> Result<Vec<(String, PathBuf)>, CheckpointError> {
        let context = || format!("list {}", dir.display());
        let rd = match std::fs::read_dir(dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(io(context())(e)),
        };
        let mut out = vec![];
        for e in rd {
            let e = e.map_err(io(context()))?;
            out.push((e.file_name().to_string_lossy().into_owned(), e.path()));
        }
        Ok(out)
    }
}

fn sync_dir(dir: &Path) -> Result<(), CheckpointError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(format!("sync the directory {}", dir.display())))
}
