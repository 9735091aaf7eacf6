//! Which GPUs this machine gives its ranks, asked of the CUDA driver itself.
//!
//! The daemon only needs a count (to advertise GPU slots) and a name for each device (to hand
//! each CUDA rank its own through `CUDA_VISIBLE_DEVICES`), so it loads `libcuda` directly and
//! makes two driver calls instead of linking the CUDA stack the ranks use. No driver, a driver
//! that fails to initialise, or no device all mean none: the scheduler then never places a
//! CUDA rank here.

use std::ffi::c_int;

use libloading::{Library, Symbol};

type CuInit = unsafe extern "C" fn(flags: u32) -> c_int;
type CuDeviceGetCount = unsafe extern "C" fn(count: *mut c_int) -> c_int;

/// The names the driver installs under (the unversioned one only with development files).
const LIBRARIES: [&str; 2] = ["libcuda.so.1", "libcuda.so"];

/// The GPUs this daemon may hand out, as a rank's `CUDA_VISIBLE_DEVICES` must name them: the
/// entries of the daemon's own `CUDA_VISIBLE_DEVICES` when it has one (a daemon limited to
/// GPUs 2 and 3 gives its ranks "2" and "3", not "0" and "1"), else the driver's ordinals.
pub fn visible() -> Vec<String> {
    convoy_service::gpus::visible_names(count() as usize)
}

/// GPUs the CUDA driver reports to this process (after `CUDA_VISIBLE_DEVICES`); 0 when there
/// is no usable driver.
fn count() -> u32 {
    let Some(lib) = LIBRARIES.iter().find_map(|name| {
        // SAFETY: loading the NVIDIA driver library runs only its own initialisers, which make
        // no assumptions about this process; it is the library cudarc loads in every rank.
        unsafe { Library::new(*name) }.ok()
    }) else {
        return 0;
    };
    // SAFETY: `cuInit` and `cuDeviceGetCount` have these signatures in every CUDA driver API
    // version (cuda.h: `CUresult cuInit(unsigned int)`, `CUresult cuDeviceGetCount(int *)`,
    // CUresult being a C enum). `n` outlives the call that writes it.
    let n = unsafe {
        let init: Symbol<CuInit> = match lib.get(b"cuInit\0") {
            Ok(f) => f,
            Err(_) => return 0,
        };
        let device_count: Symbol<CuDeviceGetCount> = match lib.get(b"cuDeviceGetCount\0") {
            Ok(f) => f,
            Err(_) => return 0,
        };
        let mut n: c_int = 0;
        if init(0) != 0 || device_count(&mut n) != 0 {
            return 0;
        }
        n
    };
    // The driver keeps state after cuInit; unloading it again is not something it supports
    // well, and the daemon lives as long as the machine's GPUs anyway.
    std::mem::forget(lib);
    u32::try_from(n).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_machine_without_the_nvidia_driver_has_no_gpus_and_one_with_it_has_some() {
        let n = super::count();
        if std::path::Path::new("/dev/nvidiactl").exists() {
            assert!(
                n >= 1,
                "the driver's device node exists but no GPU was counted"
            );
        } else {
            assert_eq!(n, 0);
        }
    }
}
