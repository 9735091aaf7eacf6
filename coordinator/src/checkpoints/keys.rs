//! The byte keys of the checkpoint index's trees. Every field is big-endian and fixed-width, so
//! sled's byte order is the numeric order of (job, step, generation, part): a job's manifests
//! come out by step, and one prefix covers a job, a checkpoint, an upload or a part.

use std::fmt;

use crate::model::JobId;

/// One part of one upload: the byte range a single rank sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PartKey {
    pub job: JobId,
    pub step: u64,
    /// The job attempt that uploads; two attempts writing the same step never share chunks.
    pub generation: u64,
    pub part: u32,
}

impl PartKey {
    pub(crate) fn upload(&self) -> Upload {
        Upload {
            job: self.job,
            step: self.step,
            generation: self.generation,
        }
    }
}

/// One upload of a checkpoint: what a manifest, once committed, refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Upload {
    pub job: JobId,
    pub step: u64,
    pub generation: u64,
}

impl Upload {
    /// The upload a committed checkpoint's chunks were stored under.
    pub(crate) fn of(m: &super::manifest::Manifest) -> Upload {
        Upload {
            job: m.job,
            step: m.step,
            generation: m.generation,
        }
    }
}

impl fmt::Display for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} step {} generation {}",
            self.job, self.step, self.generation
        )
    }
}

const U64: usize = 8;
const U32: usize = 4;
pub(crate) const JOB_LEN: usize = U64;
pub(crate) const MANIFEST_LEN: usize = 2 * U64;
pub(crate) const UPLOAD_LEN: usize = 3 * U64;
pub(crate) const PART_LEN: usize = UPLOAD_LEN + U32;

pub(crate) fn job_prefix(job: JobId) -> [u8; JOB_LEN] {
    job.0.to_be_bytes()
}

/// `ckpt/manifests`: (job, step).
pub(crate) fn manifest_key(job: JobId, step: u64) -> [u8; MANIFEST_LEN] {
    let mut k = [0u8; MANIFEST_LEN];
    k[..U64].copy_from_slice(&job.0.to_be_bytes());
    k[U64..].copy_from_slice(&step.to_be_bytes());
    k
}

/// The prefix of an upload's chunks (and of its pending part records).
pub(crate) fn upload_prefix(u: Upload) -> [u8; UPLOAD_LEN] {
    let mut k = [0u8; UPLOAD_LEN];
    k[..MANIFEST_LEN].copy_from_slice(&manifest_key(u.job, u.step));
    k[MANIFEST_LEN..].copy_from_slice(&u.generation.to_be_bytes());
    k
}

/// `ckpt/pending`: (job, step, generation, part); also the prefix of that part's chunks.
pub(crate) fn part_key(p: &PartKey) -> [u8; PART_LEN] {
    let mut k = [0u8; PART_LEN];
    k[..UPLOAD_LEN].copy_from_slice(&upload_prefix(p.upload()));
    k[UPLOAD_LEN..].copy_from_slice(&p.part.to_be_bytes());
    k
}

fn be_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_be_bytes(b.get(at..at + U64)?.try_into().ok()?))
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + U32)?.try_into().ok()?))
}

/// The upload a pending-part or chunk key belongs to; `None` for a key of another length.
pub(crate) fn split_upload(k: &[u8], expected_len: usize) -> Option<Upload> {
    if k.len() != expected_len {
        return None;
    }
    Some(Upload {
        job: JobId(be_u64(k, 0)?),
        step: be_u64(k, U64)?,
        generation: be_u64(k, 2 * U64)?,
    })
}

/// The part number of a pending-part key.
pub(crate) fn split_part(k: &[u8]) -> Option<(Upload, u32)> {
    Some((split_upload(k, PART_LEN)?, be_u32(k, UPLOAD_LEN)?))
}

/// The step of a manifest key.
pub(crate) fn split_manifest(k: &[u8]) -> Option<(JobId, u64)> {
    if k.len() != MANIFEST_LEN {
        return None;
    }
    Some((JobId(be_u64(k, 0)?), be_u64(k, U64)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(job: u64, step: u64, generation: u64, part: u32) -> PartKey {
        PartKey {
            job: JobId(job),
            step,
            generation,
            part,
        }
    }

    #[test]
    fn part_keys_sort_numerically_field_by_field() {
        // Values that straddle byte boundaries: little-endian or text keys would misorder them.
        let tuples = [
            (1, 1, 1, 0),
            (1, 1, 1, 1),
            (1, 1, 1, 256),
            (1, 1, 2, 0),
            (1, 255, 0, 0),
            (1, 256, 0, 0),
            (1, u64::MAX, u64::MAX, u32::MAX),
            (2, 0, 0, 0),
            (256, 0, 0, 0),
        ];
        let keys: Vec<_> = tuples
            .iter()
            .map(|&(j, s, g, p)| part_key(&pk(j, s, g, p)))
            .collect();
        for w in keys.windows(2) {
            assert!(w[0] < w[1], "{:?} !< {:?}", w[0], w[1]);
        }
    }

    #[test]
    fn manifest_keys_sort_by_job_then_step() {
        let keys = [
            manifest_key(JobId(1), 9),
            manifest_key(JobId(1), 10),
            manifest_key(JobId(1), 300),
            manifest_key(JobId(2), 0),
        ];
        assert!(keys.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn keys_split_back_into_their_fields_and_prefixes_nest() {
        let p = pk(3, 200, 7, 1);
        assert_eq!(split_part(&part_key(&p)), Some((p.upload(), 1)));
        assert_eq!(
            split_manifest(&manifest_key(JobId(3), 200)),
            Some((JobId(3), 200))
        );
        assert_eq!(split_part(b"short"), None);
        let part = part_key(&p);
        assert!(part.starts_with(&upload_prefix(p.upload())));
        assert!(part.starts_with(&manifest_key(p.job, p.step)));
        assert!(part.starts_with(&job_prefix(p.job)));
    }
}
