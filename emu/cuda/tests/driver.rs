//! The driver API called as cudarc calls it, through the exported functions themselves (they
//! are ordinary Rust functions of the rlib; the cdylib exports the same symbols).
//!
//! The tests of this binary share one process, hence one driver state, and run in parallel:
//! each retains the primary context (so none destroys another's), and none provokes a kernel
//! fault (sticky for the whole context: see tests/driver_fault.rs, its own process).

use std::ffi::{CStr, c_char, c_void};
use std::ptr::null_mut;

use convoy_cuda_emu::driver::*;

mod common;
use common::*;

#[test]
fn the_driver_reports_one_emulated_gpu_of_the_configured_architecture() {
    let mut version = 0;
    // SAFETY: `version` is a live local int.
    assert_eq!(unsafe { cuDriverGetVersion(&mut version) }, CUDA_SUCCESS);
    assert_eq!(version, 12040);
    // SAFETY: takes no pointer.
    assert_eq!(unsafe { cuInit(0) }, CUDA_SUCCESS);
    // SAFETY: takes no pointer.
    assert_eq!(unsafe { cuInit(1) }, CUDA_ERROR_INVALID_VALUE);

    let devices: u32 = std::env::var("CONVOY_EMU_DEVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let visible = visible_devices(
        devices,
        std::env::var("CUDA_VISIBLE_DEVICES").ok().as_deref(),
    );
    let mut n = -1;
    // SAFETY: `n` is a live local int.
    assert_eq!(unsafe { cuDeviceGetCount(&mut n) }, CUDA_SUCCESS);
    assert_eq!(n as usize, visible.len());
    let mut dev = -1;
    // SAFETY: `dev` is a live local CUdevice.
    unsafe {
        assert_eq!(cuDeviceGet(&mut dev, 0), CUDA_SUCCESS);
        assert_eq!(dev, 0);
        assert_eq!(cuDeviceGet(&mut dev, n), CUDA_ERROR_INVALID_DEVICE);
        assert_eq!(cuDeviceGet(null_mut(), 0), CUDA_ERROR_INVALID_VALUE);
    }

    let mut name = [0 as c_char; 128];
    // SAFETY: `name` has 128 writable chars.
    let r = unsafe { cuDeviceGetName(name.as_mut_ptr(), 128, 0) };
    assert_eq!(r, CUDA_SUCCESS);
    // SAFETY: cuDeviceGetName NUL-terminated it within the buffer.
    let name = unsafe { CStr::from_ptr(name.as_ptr()) }.to_str().unwrap();
    assert!(name.starts_with("convoy emulated"), "{name}");
    let mut short = [1 as c_char; 8];
    // SAFETY: `short` has 8 writable chars.
    let r = unsafe { cuDeviceGetName(short.as_mut_ptr(), 8, 0) };
    assert_eq!(r, CUDA_SUCCESS);
    // SAFETY: NUL-terminated within the 8 bytes.
    assert_eq!(unsafe { CStr::from_ptr(short.as_ptr()) }, c"convoy ");

    let arch = Arch::from_env_value(std::env::var("CONVOY_EMU_ARCH").ok().as_deref()).unwrap();
    assert_eq!(attribute(75), Ok(arch.major), "compute capability major");
    assert_eq!(attribute(76), Ok(arch.minor), "compute capability minor");
    assert_eq!(attribute(10), Ok(32), "warp size");
    assert_eq!(attribute(1), Ok(1024), "threads per block");
    assert_eq!(attribute(2), Ok(1024));
    assert_eq!(attribute(4), Ok(64));
    assert_eq!(attribute(5), Ok(i32::MAX));
    assert_eq!(attribute(8), Ok(48 << 10), "shared memory per block");
    let (optin, sms) = if arch == Arch::SM_90 {
        (227 << 10, 132)
    } else {
        (163 << 10, 108)
    };
    assert_eq!(attribute(97), Ok(optin), "opt-in shared memory");
    assert_eq!(attribute(16), Ok(sms), "multiprocessors");
    assert_eq!(attribute(41), Ok(1), "unified addressing");
    assert_eq!(
        attribute(115),
        Ok(1),
        "memory pools (cudarc then allocates async)"
    );
    assert!(attribute(13).unwrap() > 1_000_000, "clock rate in kHz");
    assert_eq!(attribute(9999), Err(CUDA_ERROR_INVALID_VALUE));
    let mut v = 0;
    // SAFETY: `v` is a live local int.
    let r = unsafe { cuDeviceGetAttribute(&mut v, 75, 7) };
    assert_eq!(r, CUDA_ERROR_INVALID_DEVICE);

    let mut total = 0usize;
    // SAFETY: `total` is a live local size_t.
    assert_eq!(unsafe { cuDeviceTotalMem_v2(&mut total, 0) }, CUDA_SUCCESS);
    assert_eq!(total, 16 << 30);
    let mut uuid = [0u8; 16];
    // SAFETY: `uuid` has 16 writable bytes.
    assert_eq!(unsafe { cuDeviceGetUuid(&mut uuid, 0) }, CUDA_SUCCESS);
    assert_eq!(&uuid[..14], b"convoy-emu-gpu");
}

#[test]
fn error_names_and_strings_are_the_drivers() {
    let mut s: *const c_char = std::ptr::null();
    // SAFETY: `s` is a live local pointer; the strings returned are static.
    unsafe {
        assert_eq!(cuGetErrorName(700, &mut s), CUDA_SUCCESS);
        assert_eq!(CStr::from_ptr(s), c"CUDA_ERROR_ILLEGAL_ADDRESS");
        assert_eq!(cuGetErrorString(719, &mut s), CUDA_SUCCESS);
        assert_eq!(CStr::from_ptr(s), c"unspecified launch failure");
        assert_eq!(cuGetErrorName(12345, &mut s), CUDA_ERROR_INVALID_VALUE);
        assert!(s.is_null());
        assert_eq!(cuGetErrorName(0, null_mut()), CUDA_ERROR_INVALID_VALUE);
    }
}

#[test]
fn memory_needs_a_current_context_on_the_calling_thread() {
    let _ctx = Ctx::open();
    std::thread::spawn(|| {
        let mut p = 0;
        let mut current = 1 as CUcontext;
        // SAFETY: `p` and `current` are live locals.
        unsafe {
            assert_eq!(cuMemAlloc_v2(&mut p, 16), CUDA_ERROR_INVALID_CONTEXT);
            assert_eq!(cuCtxGetCurrent(&mut current), CUDA_SUCCESS);
        }
        assert!(current.is_null(), "no context is current on a new thread");
        let ctx = Ctx::open();
        // SAFETY: `current` and `dev` are live locals.
        unsafe {
            assert_eq!(cuCtxGetCurrent(&mut current), CUDA_SUCCESS);
            assert_eq!(current, ctx.0);
            let mut dev = -1;
            assert_eq!(cuCtxGetDevice(&mut dev), CUDA_SUCCESS);
            assert_eq!(dev, 0);
            assert_eq!(
                cuCtxSetCurrent(0x1234 as CUcontext),
                CUDA_ERROR_INVALID_CONTEXT
            );
            // Push and pop: the stack's top is current.
            assert_eq!(cuCtxPopCurrent_v2(&mut current), CUDA_SUCCESS);
            assert_eq!(current, ctx.0);
            assert_eq!(cuCtxSynchronize(), CUDA_ERROR_INVALID_CONTEXT);
            assert_eq!(cuCtxPushCurrent_v2(ctx.0), CUDA_SUCCESS);
            assert_eq!(cuCtxSynchronize(), CUDA_SUCCESS);
        }
        let p = alloc(16);
        assert_eq!(free(p), CUDA_SUCCESS);
    })
    .join()
    .unwrap();
}

#[test]
fn bytes_go_to_the_device_and_back() {
    let _ctx = Ctx::open();
    let a = alloc(1000);
    let b = alloc(1000);
    assert_eq!(download(a, 1000), vec![0; 1000], "allocations start zeroed");
    let data: Vec<u8> = (0..1000).map(|i| (i * 7 % 251) as u8).collect();
    assert_eq!(htod(a, &data), CUDA_SUCCESS);
    assert_eq!(download(a, 1000), data);
    // SAFETY: takes no host pointer.
    assert_eq!(unsafe { cuMemcpyDtoD_v2(b + 10, a, 990) }, CUDA_SUCCESS);
    assert_eq!(download(b + 10, 990), data[..990]);
    assert_eq!(download(b, 10), vec![0; 10]);

    // The asynchronous forms, on the default stream and on a stream of its own.
    let s = new_stream();
    for stream in [null_mut(), s] {
        let mut back = vec![0u8; 100];
        // SAFETY: `data` and `back` have the 100 bytes copied.
        unsafe {
            assert_eq!(
                cuMemcpyHtoDAsync_v2(b, data[100..].as_ptr().cast(), 100, stream),
                CUDA_SUCCESS
            );
            assert_eq!(cuMemcpyDtoDAsync_v2(a, b, 100, stream), CUDA_SUCCESS);
            assert_eq!(
                cuMemcpyDtoHAsync_v2(back.as_mut_ptr().cast(), a, 100, stream),
                CUDA_SUCCESS
            );
            assert_eq!(cuStreamSynchronize(stream), CUDA_SUCCESS);
        }
        assert_eq!(back, data[100..200]);
    }
    let mut ap = 0;
    // SAFETY: `ap` is a live local CUdeviceptr.
    unsafe {
        assert_eq!(cuMemAllocAsync(&mut ap, 64, s), CUDA_SUCCESS);
        assert_eq!(cuMemFreeAsync(ap, s), CUDA_SUCCESS);
        assert_eq!(cuStreamDestroy_v2(s), CUDA_SUCCESS);
    }
    assert_eq!(free(a), CUDA_SUCCESS);
    assert_eq!(free(b), CUDA_SUCCESS);
}

#[test]
fn memsets_write_their_pattern_and_nothing_beyond() {
    let _ctx = Ctx::open();
    let a = alloc(64);
    // SAFETY: takes no host pointer.
    unsafe {
        assert_eq!(cuMemsetD8_v2(a, 0xab, 64), CUDA_SUCCESS);
        assert_eq!(cuMemsetD32_v2(a + 4, 0x0102_0304, 2), CUDA_SUCCESS);
        assert_eq!(
            cuMemsetD16Async(a + 16, 0xbeef, 3, null_mut()),
            CUDA_SUCCESS
        );
    }
    let got = download(a, 64);
    assert_eq!(got[..4], [0xab; 4]);
    assert_eq!(got[4..12], [4, 3, 2, 1, 4, 3, 2, 1]);
    assert_eq!(got[12..16], [0xab; 4]);
    assert_eq!(got[16..22], [0xef, 0xbe, 0xef, 0xbe, 0xef, 0xbe]);
    assert_eq!(got[22..], [0xab; 42]);
    // SAFETY: takes no host pointer.
    unsafe {
        assert_eq!(
            cuMemsetD32_v2(a + 2, 0, 1),
            CUDA_ERROR_INVALID_VALUE,
            "misaligned"
        );
        assert_eq!(
            cuMemsetD8_v2(a + 60, 0, 5),
            CUDA_ERROR_INVALID_VALUE,
            "past the end"
        );
        assert_eq!(cuMemsetD8Async(a, 0, 64, null_mut()), CUDA_SUCCESS);
    }
    assert_eq!(download(a, 64), vec![0; 64]);
    assert_eq!(free(a), CUDA_SUCCESS);
}

#[test]
fn copies_outside_an_allocation_are_refused_before_writing() {
    let _ctx = Ctx::open();
    let a = alloc(100);
    assert_eq!(htod(a, &[7; 100]), CUDA_SUCCESS);
    assert_eq!(htod(a + 90, &[1; 20]), CUDA_ERROR_INVALID_VALUE);
    assert_eq!(
        download(a, 100),
        vec![7; 100],
        "nothing of the refused copy landed"
    );
    let mut out = [0u8; 4];
    assert_eq!(
        dtoh(&mut out, a + 100),
        CUDA_ERROR_INVALID_VALUE,
        "the gap after it"
    );
    assert_eq!(dtoh(&mut out, 0), CUDA_ERROR_INVALID_VALUE, "null");
    assert_eq!(
        dtoh(&mut out, 0x1000),
        CUDA_ERROR_INVALID_VALUE,
        "a small integer"
    );
    // SAFETY: a null host pointer with a size: refused, never read.
    unsafe {
        assert_eq!(
            cuMemcpyHtoD_v2(a, std::ptr::null(), 4),
            CUDA_ERROR_INVALID_VALUE
        );
        assert_eq!(cuMemcpyDtoD_v2(a, a + 50, 51), CUDA_ERROR_INVALID_VALUE);
    }
    assert_eq!(htod(a, &[]), CUDA_SUCCESS, "an empty copy does nothing");
    assert_eq!(free(a), CUDA_SUCCESS);
    assert_eq!(dtoh(&mut out, a), CUDA_ERROR_INVALID_VALUE, "after free");
}

#[test]
fn a_second_free_is_refused() {
    let _ctx = Ctx::open();
    let a = alloc(32);
    assert_eq!(free(a + 8), CUDA_ERROR_INVALID_VALUE, "not the start");
    assert_eq!(free(a), CUDA_SUCCESS);
    assert_eq!(free(a), CUDA_ERROR_INVALID_VALUE);
    assert_eq!(free(0), CUDA_SUCCESS, "freeing null does nothing");
    let mut p = 0;
    // SAFETY: `p` is a live local CUdeviceptr.
    unsafe {
        assert_eq!(cuMemAlloc_v2(&mut p, 0), CUDA_ERROR_INVALID_VALUE);
        assert_eq!(cuMemAlloc_v2(&mut p, 1 << 40), CUDA_ERROR_OUT_OF_MEMORY);
        assert_eq!(cuMemAlloc_v2(null_mut(), 8), CUDA_ERROR_INVALID_VALUE);
        // cudarc's `CudaStream::null` allocates nothing asynchronously.
        assert_eq!(cuMemAllocAsync(&mut p, 0, null_mut()), CUDA_SUCCESS);
        assert_eq!(cuMemFreeAsync(p, null_mut()), CUDA_SUCCESS);
    }
}

#[test]
fn memory_info_counts_the_whole_device() {
    let _ctx = Ctx::open();
    let (mut free_bytes, mut total) = (0usize, 0usize);
    // SAFETY: both are live local size_ts.
    let r = unsafe { cuMemGetInfo_v2(&mut free_bytes, &mut total) };
    assert_eq!(r, CUDA_SUCCESS);
    assert_eq!(total, 16 << 30);
    assert!(free_bytes <= total);
}

#[test]
fn events_time_the_host_between_records() {
    let _ctx = Ctx::open();
    let (start, end) = (new_event(0), new_event(0));
    assert_eq!(
        elapsed(start, end),
        Err(CUDA_ERROR_INVALID_HANDLE),
        "not recorded"
    );
    let s = new_stream();
    // SAFETY: takes no host pointer.
    unsafe {
        assert_eq!(cuEventRecord(start, null_mut()), CUDA_SUCCESS);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(cuEventRecord(end, s), CUDA_SUCCESS);
        assert_eq!(cuEventQuery(end), CUDA_SUCCESS);
        assert_eq!(cuEventSynchronize(end), CUDA_SUCCESS);
        assert_eq!(cuStreamWaitEvent(s, start, 0), CUDA_SUCCESS);
        assert_eq!(cuStreamQuery(s), CUDA_SUCCESS);
    }
    let ms = elapsed(start, end).unwrap();
    assert!((15.0..10_000.0).contains(&ms), "{ms} ms");
    assert!(elapsed(end, start).unwrap() < 0.0);

    let untimed = new_event(2); // CU_EVENT_DISABLE_TIMING
    // SAFETY: takes no host pointer.
    unsafe {
        assert_eq!(cuEventRecord(untimed, null_mut()), CUDA_SUCCESS);
    }
    assert_eq!(elapsed(start, untimed), Err(CUDA_ERROR_INVALID_HANDLE));
    // SAFETY: takes no host pointer.
    unsafe {
        assert_eq!(cuEventDestroy_v2(untimed), CUDA_SUCCESS);
        assert_eq!(cuEventDestroy_v2(untimed), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(cuEventQuery(untimed), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(cuEventDestroy_v2(start), CUDA_SUCCESS);
        assert_eq!(cuEventDestroy_v2(end), CUDA_SUCCESS);
        assert_eq!(cuStreamDestroy_v2(s), CUDA_SUCCESS);
    }
    let mut e = null_mut();
    // SAFETY: `e` is a live local CUevent.
    let r = unsafe { cuEventCreate(&mut e, 0x100) };
    assert_eq!(r, CUDA_ERROR_INVALID_VALUE);
}

#[test]
fn stale_and_made_up_stream_handles_are_refused() {
    let _ctx = Ctx::open();
    let s = new_stream();
    // SAFETY: takes no host pointer; the handles are only looked up.
    unsafe {
        assert_eq!(cuStreamDestroy_v2(s), CUDA_SUCCESS);
        assert_eq!(cuStreamDestroy_v2(s), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(cuStreamSynchronize(s), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(cuStreamDestroy_v2(null_mut()), CUDA_ERROR_INVALID_HANDLE);
        assert_eq!(cuStreamSynchronize(null_mut()), CUDA_SUCCESS);
        // CU_STREAM_LEGACY and CU_STREAM_PER_THREAD are default streams too.
        assert_eq!(cuStreamSynchronize(1 as CUstream), CUDA_SUCCESS);
        assert_eq!(cuStreamSynchronize(2 as CUstream), CUDA_SUCCESS);
        assert_eq!(
            cuStreamSynchronize(0xdead_beef as CUstream),
            CUDA_ERROR_INVALID_HANDLE
        );
        let mut s2 = null_mut();
        assert_eq!(cuStreamCreate(&mut s2, 4), CUDA_ERROR_INVALID_VALUE);
        let p = alloc(8);
        assert_eq!(
            cuMemsetD8Async(p, 0, 8, 0x4242_0000 as CUstream),
            CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(free(p), CUDA_SUCCESS);
    }
}

#[test]
fn host_memory_is_plain_memory() {
    let _ctx = Ctx::open();
    let mut p: *mut c_void = null_mut();
    // SAFETY: `p` is a live local pointer; the block has the 4096 bytes written.
    unsafe {
        assert_eq!(cuMemHostAlloc(&mut p, 4096, 0), CUDA_SUCCESS);
        assert!(!p.is_null());
        std::ptr::write_bytes(p.cast::<u8>(), 9, 4096);
        assert_eq!(cuMemFreeHost(p), CUDA_SUCCESS);
        assert_eq!(cuMemFreeHost(p), CUDA_ERROR_INVALID_VALUE);
    }
}

#[test]
fn images_that_are_not_ptx_text_are_refused() {
    let _ctx = Ctx::open();
    let mut m = null_mut();
    let elf = b"\x7fELF\x02\x01\x01\0";
    // SAFETY: `m` is a live local CUmodule; `elf` is NUL-terminated.
    unsafe {
        assert_eq!(
            cuModuleLoadData(&mut m, elf.as_ptr().cast()),
            CUDA_ERROR_INVALID_IMAGE
        );
        assert_eq!(
            cuModuleLoadData(&mut m, std::ptr::null()),
            CUDA_ERROR_INVALID_VALUE
        );
        let mut f = null_mut();
        assert_eq!(
            cuModuleGetFunction(&mut f, 0x5555_0000 as CUmodule, c"k".as_ptr()),
            CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(
            cuModuleUnload(0x5555_0000 as CUmodule),
            CUDA_ERROR_INVALID_HANDLE
        );
        assert_eq!(
            cuLaunchKernel(
                0x5555_0000 as CUfunction,
                1,
                1,
                1,
                1,
                1,
                1,
                0,
                null_mut(),
                null_mut(),
                null_mut()
            ),
            CUDA_ERROR_INVALID_HANDLE
        );
    }
}

#[test]
fn a_module_of_ptx_text_runs_its_kernel() {
    let _ctx = Ctx::open();
    let mut m = null_mut();
    let mut f = null_mut();
    // SAFETY: `m` and `f` are live locals; the strings are NUL-terminated.
    unsafe {
        assert_eq!(
            cuModuleLoadData(&mut m, ADD_ONE.as_ptr().cast()),
            CUDA_SUCCESS
        );
        assert_eq!(
            cuModuleGetFunction(&mut f, m, c"add_one".as_ptr()),
            CUDA_SUCCESS
        );
        let mut again = null_mut();
        assert_eq!(
            cuModuleGetFunction(&mut again, m, c"add_one".as_ptr()),
            CUDA_SUCCESS
        );
        assert_eq!(again, f, "the same kernel, the same handle");
        assert_eq!(
            cuModuleGetFunction(&mut again, m, c"add_two".as_ptr()),
            CUDA_ERROR_NOT_FOUND
        );
        let mut v = 0;
        assert_eq!(cuFuncGetAttribute(&mut v, 8, f), CUDA_SUCCESS);
        assert_eq!(v, 48 << 10, "max dynamic shared memory");
        assert_eq!(cuFuncSetAttribute(f, 8, 100 << 10), CUDA_SUCCESS);
        assert_eq!(cuFuncGetAttribute(&mut v, 8, f), CUDA_SUCCESS);
        assert_eq!(v, 100 << 10);
        assert_eq!(cuFuncSetAttribute(f, 8, 1 << 20), CUDA_ERROR_INVALID_VALUE);
    }

    let n = 1000u32;
    let a = alloc(n as usize * 4);
    let init: Vec<u8> = (0..n).flat_map(|i| (i * 3).to_le_bytes()).collect();
    assert_eq!(htod(a, &init), CUDA_SUCCESS);
    let before = stats();
    assert_eq!(launch_add_one(f, n.div_ceil(128), 128, a, n), CUDA_SUCCESS);
    let after = stats();
    assert!(after.launches > before.launches);
    assert!(after.thread_instructions > before.thread_instructions);
    let got = download(a, n as usize * 4);
    for (i, w) in got.chunks_exact(4).enumerate() {
        let v = u32::from_le_bytes(w.try_into().unwrap());
        assert_eq!(v, i as u32 * 3 + 1, "element {i}");
    }

    // Configurations beyond the GPU's limits are refused before running, and are not sticky.
    assert_eq!(launch_add_one(f, 0, 128, a, n), CUDA_ERROR_INVALID_VALUE);
    assert_eq!(launch_add_one(f, 1, 2048, a, n), CUDA_ERROR_INVALID_VALUE);
    let mut extra = [std::ptr::dangling_mut::<c_void>(), null_mut()];
    // SAFETY: `extra` is a NUL-terminated array (refused before it is read further).
    let r = unsafe {
        cuLaunchKernel(
            f,
            1,
            1,
            1,
            1,
            1,
            1,
            0,
            null_mut(),
            null_mut(),
            extra.as_mut_ptr(),
        )
    };
    assert_eq!(r, CUDA_ERROR_NOT_SUPPORTED);
    // SAFETY: takes no host pointer.
    unsafe {
        assert_eq!(cuCtxSynchronize(), CUDA_SUCCESS);
        assert_eq!(cuModuleUnload(m), CUDA_SUCCESS);
    }
    assert_eq!(
        launch_add_one(f, 1, 1, a, 1),
        CUDA_ERROR_INVALID_HANDLE,
        "unloaded"
    );
    assert_eq!(free(a), CUDA_SUCCESS);
}
