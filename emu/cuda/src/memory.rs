//! Emulated device memory: each allocation is its own host buffer at a device address no other
//! allocation overlaps, with an unmapped gap after it, so every access can be checked against
//! the live allocations (a memcheck) and a stale or off-the-end pointer faults instead of
//! reading a neighbour.

use std::collections::BTreeMap;

use crate::error::EmuError;

/// Where the first allocation starts: far from 0 so that a null or small integer used as a
/// pointer faults.
const BASE: u64 = 0x7f00_0000_0000;
/// Allocations start on 256-byte boundaries, as cuMemAlloc's do, with at least this gap
/// between them.
const ALIGN: u64 = 256;
/// The memory the emulated device reports (cuDeviceTotalMem, cuMemGetInfo).
pub const TOTAL_BYTES: u64 = 16 << 30;

#[derive(Default)]
pub struct Memory {
    allocs: BTreeMap<u64, Vec<u8>>,
    next: u64,
    used: u64,
}

impl Memory {
    pub fn new() -> Memory {
        Memory {
            allocs: BTreeMap::new(),
            next: BASE,
            used: 0,
        }
    }

    /// A new zero-filled allocation of `bytes` (the driver leaves it uninitialised; zero keeps
    /// the emulator deterministic).
    pub fn alloc(&mut self, bytes: u64) -> Result<u64, EmuError> {
        let free = TOTAL_BYTES - self.used;
        if bytes > free {
            return Err(EmuError::OutOfMemory {
                requested: bytes,
                free,
            });
        }
        let len = usize::try_from(bytes).map_err(|_| EmuError::OutOfMemory {
            requested: bytes,
            free,
        })?;
        if self.next == 0 {
            self.next = BASE;
        }
        let ptr = self.next;
        // The gap after each allocation is at least ALIGN bytes: an access just past the end
        // lands in no allocation.
        self.next = ptr + bytes.div_ceil(ALIGN) * ALIGN + ALIGN;
        self.allocs.insert(ptr, vec![0; len]);
        self.used += bytes;
        Ok(ptr)
    }

    pub fn free(&mut self, ptr: u64) -> Result<(), EmuError> {
        match self.allocs.remove(&ptr) {
            Some(buf) => {
                self.used -= buf.len() as u64;
                Ok(())
            }
            None => Err(EmuError::Memory(format!(
                "free of {ptr:#x}, which is not the start of a live allocation"
            ))),
        }
    }

    pub fn used(&self) -> u64 {
        self.used
    }

    /// The live allocation holding `[ptr, ptr + len)` and the offset of `ptr` in it.
    pub fn find(&self, ptr: u64, len: u64) -> Option<(u64, usize)> {
        let (&start, buf) = self.allocs.range(..=ptr).next_back()?;
        let off = ptr - start;
        (off.checked_add(len)? <= buf.len() as u64).then_some((start, off as usize))
    }

    /// The bytes `[ptr, ptr + len)`, which must lie in one live allocation.
    pub fn slice(&self, ptr: u64, len: usize) -> Result<&[u8], EmuError> {
        let (start, off) = self
            .find(ptr, len as u64)
            .ok_or_else(|| out_of_bounds(ptr, len))?;
        Ok(&self.allocs[&start][off..off + len])
    }

    pub fn slice_mut(&mut self, ptr: u64, len: usize) -> Result<&mut [u8], EmuError> {
        let (start, off) = self
            .find(ptr, len as u64)
            .ok_or_else(|| out_of_bounds(ptr, len))?;
        let buf = self
            .allocs
            .get_mut(&start)
            .ok_or_else(|| out_of_bounds(ptr, len))?;
        Ok(&mut buf[off..off + len])
    }

    pub fn read(&self, ptr: u64, out: &mut [u8]) -> Result<(), EmuError> {
        out.copy_from_slice(self.slice(ptr, out.len())?);
        Ok(())
    }

    pub fn write(&mut self, ptr: u64, data: &[u8]) -> Result<(), EmuError> {
        self.slice_mut(ptr, data.len())?.copy_from_slice(data);
        Ok(())
    }

    pub fn fill(&mut self, ptr: u64, byte: u8, len: usize) -> Result<(), EmuError> {
        self.slice_mut(ptr, len)?.fill(byte);
        Ok(())
    }

    /// Copies within device memory (source and destination may be different allocations).
    pub fn copy(&mut self, dst: u64, src: u64, len: usize) -> Result<(), EmuError> {
        let data = self.slice(src, len)?.to_vec();
        self.write(dst, &data)
    }
}

fn out_of_bounds(ptr: u64, len: usize) -> EmuError {
    EmuError::Memory(format!(
        "{len} bytes at {ptr:#x} are not inside one live device allocation"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accesses_past_an_allocation_or_after_free_are_refused() {
        let mut m = Memory::new();
        let a = m.alloc(10).unwrap();
        let b = m.alloc(10).unwrap();
        m.write(a, &[1; 10]).unwrap();
        assert!(m.write(a + 8, &[0; 4]).is_err(), "crosses the end of a");
        assert!(
            m.find(a + 10, 1).is_none(),
            "the gap belongs to no allocation"
        );
        let mut out = [0u8; 10];
        m.read(a, &mut out).unwrap();
        assert_eq!(out, [1; 10]);
        m.free(a).unwrap();
        assert!(m.read(a, &mut out).is_err(), "freed");
        assert!(m.free(a).is_err(), "double free");
        assert!(m.read(b, &mut out).is_ok());
        assert_eq!(m.used(), 10);
    }
}
