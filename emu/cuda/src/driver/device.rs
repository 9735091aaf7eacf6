//! Initialisation and the devices: count, name, UUID, memory, attributes.

use std::ffi::c_char;

use super::errors::*;
use super::state::{Arch, Config, Out, Refusal, SHARED_PER_BLOCK, api, config, init_config};
use super::{CUdevice, DEVICE_NAME, DRIVER_VERSION};
use crate::memory::TOTAL_BYTES;

/// The visible device `dev` (its ordinal as an index) and the configuration.
pub(crate) fn device(dev: CUdevice) -> Result<(usize, &'static Config), Refusal> {
    let config = config()?;
    usize::try_from(dev)
        .ok()
        .filter(|&d| d < config.visible.len())
        .map(|d| (d, config))
        .ok_or_else(|| {
            Refusal::new(
                CUDA_ERROR_INVALID_DEVICE,
                format!(
                    "device {dev} does not exist ({} visible)",
                    config.visible.len()
                ),
            )
        })
}

/// Reads the configuration (`CONVOY_EMU_ARCH`, `CONVOY_EMU_DEVICES`, `CUDA_VISIBLE_DEVICES`)
/// on the first call. A configuration the emulator cannot honour is `CUDA_ERROR_INVALID_VALUE`
/// (with the reason on stderr), no visible device `CUDA_ERROR_NO_DEVICE`.
///
/// # Safety
/// None beyond the C ABI: takes no pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuInit(flags: u32) -> CUresult {
    api("cuInit", || {
        if flags != 0 {
            return Err(Refusal::invalid(format!("flags {flags} are not 0")));
        }
        match init_config() {
            Err(why) => Err(Refusal::invalid(why.clone())),
            Ok(c) if c.visible.is_empty() => Err(Refusal::new(
                CUDA_ERROR_NO_DEVICE,
                "CUDA_VISIBLE_DEVICES leaves no emulated device visible",
            )),
            Ok(_) => Ok(()),
        }
    })
}

/// The CUDA version of the driver: 12040. Needs no `cuInit`.
///
/// # Safety
/// `driver_version` must be null or point at a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDriverGetVersion(driver_version: *mut i32) -> CUresult {
    api("cuDriverGetVersion", || {
        let out = Out::new(driver_version, "driverVersion")?;
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(DRIVER_VERSION) };
        Ok(())
    })
}

/// The number of visible devices.
///
/// # Safety
/// `count` must be null or point at a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetCount(count: *mut i32) -> CUresult {
    api("cuDeviceGetCount", || {
        let out = Out::new(count, "count")?;
        let n = config()?.visible.len();
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(i32::try_from(n).unwrap_or(i32::MAX)) };
        Ok(())
    })
}

/// The device of ordinal `ordinal` (which is its own handle).
///
/// # Safety
/// `device` must be null or point at a writable `CUdevice`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGet(device_out: *mut CUdevice, ordinal: i32) -> CUresult {
    api("cuDeviceGet", || {
        let out = Out::new(device_out, "device")?;
        device(ordinal)?;
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(ordinal) };
        Ok(())
    })
}

/// The device's name, [`DEVICE_NAME`], NUL-terminated and cut to `len` bytes.
///
/// # Safety
/// `name` must be null or point at `len` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetName(name: *mut c_char, len: i32, dev: CUdevice) -> CUresult {
    api("cuDeviceGetName", || {
        let out = Out::new(name, "name")?;
        let len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| Refusal::invalid(format!("len {len} leaves no room")))?;
        device(dev)?;
        let bytes = DEVICE_NAME.as_bytes();
        let n = bytes.len().min(len - 1);
        let dst = out.as_ptr().cast::<u8>();
        // SAFETY: `name` is non-null and, by the caller's contract, has `len` writable bytes;
        // `n + 1 <= len` are written.
        unsafe {
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, n);
            dst.add(n).write(0);
        }
        Ok(())
    })
}

/// The 16 bytes of the device's UUID: "convoy-emu-gpu", 0 and its physical index.
///
/// # Safety
/// `uuid` must be null or point at 16 writable bytes (`CUuuid`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetUuid(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    // SAFETY: the caller's contract, as documented above.
    unsafe { get_uuid("cuDeviceGetUuid", uuid, dev) }
}

/// As [`cuDeviceGetUuid`] (the `_v2` differs only for MIG instances).
///
/// # Safety
/// `uuid` must be null or point at 16 writable bytes (`CUuuid`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetUuid_v2(uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    // SAFETY: the caller's contract, as documented above.
    unsafe { get_uuid("cuDeviceGetUuid_v2", uuid, dev) }
}

/// # Safety
/// `uuid` must be null or point at 16 writable bytes.
unsafe fn get_uuid(call: &str, uuid: *mut [u8; 16], dev: CUdevice) -> CUresult {
    api(call, || {
        let out = Out::new(uuid, "uuid")?;
        let (d, config) = device(dev)?;
        let mut bytes = [0u8; 16];
        bytes[..14].copy_from_slice(b"convoy-emu-gpu");
        bytes[15] = u8::try_from(config.visible[d]).unwrap_or(u8::MAX);
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(bytes) };
        Ok(())
    })
}

/// The device's memory: [`TOTAL_BYTES`] (16 GiB), shared by all emulated devices.
///
/// # Safety
/// `bytes` must be null or point at a writable `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice) -> CUresult {
    api("cuDeviceTotalMem_v2", || {
        let out = Out::new(bytes, "bytes")?;
        device(dev)?;
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(usize::try_from(TOTAL_BYTES).unwrap_or(usize::MAX)) };
        Ok(())
    })
}

/// The compute capability (deprecated in favour of the attributes, still exported).
///
/// # Safety
/// `major` and `minor` must be null or point at writable `int`s.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceComputeCapability(
    major: *mut i32,
    minor: *mut i32,
    dev: CUdevice,
) -> CUresult {
    api("cuDeviceComputeCapability", || {
        let (major, minor) = (Out::new(major, "major")?, Out::new(minor, "minor")?);
        let (_, config) = device(dev)?;
        // SAFETY: the caller's contract, as documented above.
        unsafe {
            major.set(config.arch.major);
            minor.set(config.arch.minor);
        }
        Ok(())
    })
}

/// One device attribute (`CUdevice_attribute`): those a program asks of a GPU it computes on
/// (limits, compute capability, SM count, clocks, memory, features), with the figures of the
/// GPU `CONVOY_EMU_ARCH` names; a feature the emulator lacks (managed memory, cooperative or
/// cluster launch, textures, stream memory operations, ...) answers 0 or, for the attributes
/// left out, `CUDA_ERROR_INVALID_VALUE`.
///
/// # Safety
/// `pi` must be null or point at a writable `int`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cuDeviceGetAttribute(
    pi: *mut i32,
    attrib: u32,
    dev: CUdevice,
) -> CUresult {
    api("cuDeviceGetAttribute", || {
        let out = Out::new(pi, "pi")?;
        let (d, config) = device(dev)?;
        let value = device_attribute(attrib, config.arch, config.visible[d]).ok_or_else(|| {
            Refusal::invalid(format!(
                "device attribute {attrib} is not one the emulator answers"
            ))
        })?;
        // SAFETY: the caller's contract, as documented above.
        unsafe { out.set(value) };
        Ok(())
    })
}

/// The value of device attribute `attrib` (cuda.h's `CUdevice_attribute` numbers) of the
/// emulated device of physical index `physical`.
pub fn device_attribute(attrib: u32, arch: Arch, physical: u32) -> Option<i32> {
    let sm90 = arch == Arch::SM_90;
    Some(match attrib {
        1 => 1024,                              // MAX_THREADS_PER_BLOCK
        2 | 3 => 1024,                          // MAX_BLOCK_DIM_X, _Y
        4 => 64,                                // MAX_BLOCK_DIM_Z
        5 => i32::MAX,                          // MAX_GRID_DIM_X
        6 | 7 => 65535,                         // MAX_GRID_DIM_Y, _Z
        8 => SHARED_PER_BLOCK,                  // MAX_SHARED_MEMORY_PER_BLOCK
        9 => 64 << 10,                          // TOTAL_CONSTANT_MEMORY
        10 => 32,                               // WARP_SIZE
        11 => i32::MAX,                         // MAX_PITCH
        12 => 65536,                            // MAX_REGISTERS_PER_BLOCK
        13 => arch.clock_khz(),                 // CLOCK_RATE
        14 => 512,                              // TEXTURE_ALIGNMENT
        15 => 1,                                // GPU_OVERLAP
        16 => arch.multiprocessors(),           // MULTIPROCESSOR_COUNT
        17 => 0,                                // KERNEL_EXEC_TIMEOUT
        18 => 0,                                // INTEGRATED
        19 => 1,                                // CAN_MAP_HOST_MEMORY
        20 => 0,                                // COMPUTE_MODE: default
        30 => 512,                              // SURFACE_ALIGNMENT
        31 => 1,                                // CONCURRENT_KERNELS
        32 => 1,                                // ECC_ENABLED
        33 => 0x18 + physical as i32,           // PCI_BUS_ID
        34 => 0,                                // PCI_DEVICE_ID
        35 => 0,                                // TCC_DRIVER
        36 => arch.memory_clock_khz(),          // MEMORY_CLOCK_RATE
        37 => 5120,                             // GLOBAL_MEMORY_BUS_WIDTH
        38 => arch.l2_bytes(),                  // L2_CACHE_SIZE
        39 => 2048,                             // MAX_THREADS_PER_MULTIPROCESSOR
        40 => 2,                                // ASYNC_ENGINE_COUNT
        41 => 1,                                // UNIFIED_ADDRESSING
        50 => 0,                                // PCI_DOMAIN_ID
        51 => 32,                               // TEXTURE_PITCH_ALIGNMENT
        75 => arch.major,                       // COMPUTE_CAPABILITY_MAJOR
        76 => arch.minor,                       // COMPUTE_CAPABILITY_MINOR
        78 => 1,                                // STREAM_PRIORITIES_SUPPORTED
        79 | 80 => 1, // GLOBAL_L1_CACHE_SUPPORTED, LOCAL_L1_CACHE_SUPPORTED
        81 => arch.shared_per_multiprocessor(), // MAX_SHARED_MEMORY_PER_MULTIPROCESSOR
        82 => 65536,  // MAX_REGISTERS_PER_MULTIPROCESSOR
        83 => 0,      // MANAGED_MEMORY: not emulated
        84 | 85 => 0, // MULTI_GPU_BOARD, MULTI_GPU_BOARD_GROUP_ID
        86 => 0,      // HOST_NATIVE_ATOMIC_SUPPORTED
        87 => 2,      // SINGLE_TO_DOUBLE_PRECISION_PERF_RATIO
        88 | 89 => 0, // PAGEABLE_MEMORY_ACCESS, CONCURRENT_MANAGED_ACCESS
        90 => 1,      // COMPUTE_PREEMPTION_SUPPORTED
        91 => 0,      // CAN_USE_HOST_POINTER_FOR_REGISTERED_MEM
        92..=94 => 0, // stream memory operations: not emulated
        95 | 96 => 0, // COOPERATIVE_LAUNCH, _MULTI_DEVICE: not emulated
        97 => arch.shared_optin(), // MAX_SHARED_MEMORY_PER_BLOCK_OPTIN
        98 => 0,      // CAN_FLUSH_REMOTE_WRITES
        99 => 0,      // HOST_REGISTER_SUPPORTED: not emulated
        100 | 101 => 0, // pageable memory through host page tables
        102 => 0,     // VIRTUAL_ADDRESS_MANAGEMENT_SUPPORTED: not emulated
        103..=105 => 0, // exportable handle types
        106 => 32,    // MAX_BLOCKS_PER_MULTIPROCESSOR
        107 => 0,     // GENERIC_COMPRESSION_SUPPORTED
        111 => 1024,  // RESERVED_SHARED_MEMORY_PER_BLOCK
        112..=114 => 0, // sparse arrays, read-only host register, semaphores
        115 => 1,     // MEMORY_POOLS_SUPPORTED: cuMemAllocAsync works
        116..=118 => 0, // GPUDirect RDMA
        119 => 0,     // MEMPOOL_SUPPORTED_HANDLE_TYPES
        120 => 0,     // CLUSTER_LAUNCH: not emulated
        121..=125 => 0, // deferred mapping, stream mem ops v2, DMA-BUF, IPC events
        126 => {
            if sm90 {
                4
            } else {
                1
            }
        } // MEM_SYNC_DOMAIN_COUNT
        127 => 0,     // TENSOR_MAP_ACCESS_SUPPORTED: not emulated
        129 => 0,     // UNIFIED_FUNCTION_POINTERS
        _ => return None,
    })
}
