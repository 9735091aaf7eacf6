//! The shared-memory race check: between two barriers, a byte written by one thread must not
//! be read or written by another (lanes of the same warp instruction excepted: their accesses
//! happen together). What compute-sanitizer's racecheck reports as hazards, for the one
//! schedule the interpreter runs.

const NONE: u32 = u32::MAX;
const MANY: u32 = u32::MAX - 1;

pub(crate) struct Shadow {
    /// Advanced at every barrier and every new block: older stamps are stale.
    epoch: u32,
    w_epoch: Vec<u32>,
    writer: Vec<u32>,
    w_serial: Vec<u64>,
    r_epoch: Vec<u32>,
    reader: Vec<u32>,
}

impl Shadow {
    pub(crate) fn new(bytes: usize) -> Shadow {
        Shadow {
            epoch: 1,
            w_epoch: vec![0; bytes],
            writer: vec![NONE; bytes],
            w_serial: vec![0; bytes],
            r_epoch: vec![0; bytes],
            reader: vec![NONE; bytes],
        }
    }

    pub(crate) fn new_block(&mut self) {
        self.barrier();
    }

    pub(crate) fn barrier(&mut self) {
        self.epoch += 1;
        if self.epoch == u32::MAX {
            self.epoch = 1;
            self.w_epoch.fill(0);
            self.r_epoch.fill(0);
        }
    }

    /// Records an access of `len` bytes at shared offset `off` by thread `tid` in warp
    /// instruction `serial`; the error names the other thread.
    pub(crate) fn access(
        &mut self,
        off: usize,
        len: usize,
        tid: u32,
        write: bool,
        serial: u64,
    ) -> Result<(), String> {
        let e = self.epoch;
        for i in off..off + len {
            let wrote = self.w_epoch[i] == e && self.writer[i] != tid && self.w_serial[i] != serial;
            if wrote {
                return Err(format!(
                    "shared-memory race: thread {tid} {} byte {i} that thread {} wrote since \
                     the last barrier",
                    if write { "writes" } else { "reads" },
                    self.writer[i]
                ));
            }
            if write {
                let read = self.r_epoch[i] == e && self.reader[i] != tid;
                if read {
                    let who = match self.reader[i] {
                        MANY => "other threads".to_string(),
                        t => format!("thread {t}"),
                    };
                    return Err(format!(
                        "shared-memory race: thread {tid} writes byte {i} that {who} read since \
                         the last barrier"
                    ));
                }
                self.w_epoch[i] = e;
                self.writer[i] = tid;
                self.w_serial[i] = serial;
            } else if self.r_epoch[i] != e {
                self.r_epoch[i] = e;
                self.reader[i] = tid;
            } else if self.reader[i] != tid {
                self.reader[i] = MANY;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_read_after_another_threads_write_races_until_a_barrier() {
        let mut s = Shadow::new(16);
        s.access(0, 4, 1, true, 1).unwrap();
        s.access(0, 4, 1, false, 2).unwrap();
        assert!(s.access(0, 4, 2, false, 3).is_err());
        s.barrier();
        s.access(0, 4, 2, false, 4).unwrap();
        s.access(0, 4, 3, false, 4).unwrap();
        assert!(
            s.access(2, 1, 1, true, 5).is_err(),
            "write after others' reads"
        );
        s.barrier();
        s.access(8, 4, 5, true, 6).unwrap();
        s.access(8, 4, 6, true, 6).expect("same warp instruction");
    }
}
