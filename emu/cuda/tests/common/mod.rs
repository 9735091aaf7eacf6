//! Shared by the driver tests: the current context, copies, and a tiny kernel.
// Each test binary uses its own share of these.
#![allow(dead_code)]

use std::ffi::{CStr, c_void};
use std::ptr::null_mut;

use convoy_cuda_emu::driver::*;

/// Device 0's primary context, retained and current on this thread until dropped.
pub struct Ctx(pub CUcontext);

impl Ctx {
    pub fn open() -> Ctx {
        let mut ctx = null_mut();
        // SAFETY: `ctx` is a live local CUcontext.
        unsafe {
            assert_eq!(cuInit(0), CUDA_SUCCESS);
            assert_eq!(cuDevicePrimaryCtxRetain(&mut ctx, 0), CUDA_SUCCESS);
            assert_eq!(cuCtxSetCurrent(ctx), CUDA_SUCCESS);
        }
        Ctx(ctx)
    }
}

impl Drop for Ctx {
    fn drop(&mut self) {
        // SAFETY: takes no pointer.
        let r = unsafe { cuDevicePrimaryCtxRelease_v2(0) };
        assert_eq!(r, CUDA_SUCCESS);
    }
}

pub fn alloc(bytes: usize) -> CUdeviceptr {
    let mut p = 0;
    // SAFETY: `p` is a live local CUdeviceptr.
    assert_eq!(unsafe { cuMemAlloc_v2(&mut p, bytes) }, CUDA_SUCCESS);
    assert_ne!(p, 0);
    p
}

pub fn htod(dst: CUdeviceptr, src: &[u8]) -> CUresult {
    // SAFETY: `src` has `src.len()` readable bytes.
    unsafe { cuMemcpyHtoD_v2(dst, src.as_ptr().cast(), src.len()) }
}

pub fn dtoh(dst: &mut [u8], src: CUdeviceptr) -> CUresult {
    // SAFETY: `dst` has `dst.len()` writable bytes.
    unsafe { cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), src, dst.len()) }
}

pub fn download(src: CUdeviceptr, len: usize) -> Vec<u8> {
    let mut out = vec![0xee; len];
    assert_eq!(dtoh(&mut out, src), CUDA_SUCCESS);
    out
}

pub fn free(p: CUdeviceptr) -> CUresult {
    // SAFETY: takes no host pointer.
    unsafe { cuMemFree_v2(p) }
}

pub fn attribute(attrib: u32) -> Result<i32, CUresult> {
    let mut v = -1;
    // SAFETY: `v` is a live local int.
    match unsafe { cuDeviceGetAttribute(&mut v, attrib, 0) } {
        CUDA_SUCCESS => Ok(v),
        e => Err(e),
    }
}

pub fn new_stream() -> CUstream {
    let mut s = null_mut();
    // SAFETY: `s` is a live local CUstream.
    assert_eq!(unsafe { cuStreamCreate(&mut s, 1) }, CUDA_SUCCESS);
    s
}

pub fn new_event(flags: u32) -> CUevent {
    let mut e = null_mut();
    // SAFETY: `e` is a live local CUevent.
    assert_eq!(unsafe { cuEventCreate(&mut e, flags) }, CUDA_SUCCESS);
    e
}

pub fn elapsed(start: CUevent, end: CUevent) -> Result<f32, CUresult> {
    let mut ms = 0.0f32;
    // SAFETY: `ms` is a live local float.
    match unsafe { cuEventElapsedTime(&mut ms, start, end) } {
        CUDA_SUCCESS => Ok(ms),
        e => Err(e),
    }
}

/// `add_one(u32 *p, u32 n)`: p[i] += 1 for i < n, one thread each, as NVRTC 12.4 emits it.
pub const ADD_ONE: &CStr = c"
.version 8.4
.target sm_80
.address_size 64

.visible .entry add_one(
	.param .u64 add_one_param_0,
	.param .u32 add_one_param_1
)
{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<8>;
	.reg .b64 	%rd<5>;

	ld.param.u64 	%rd1, [add_one_param_0];
	ld.param.u32 	%r2, [add_one_param_1];
	mov.u32 	%r3, %ctaid.x;
	mov.u32 	%r4, %ntid.x;
	mov.u32 	%r5, %tid.x;
	mad.lo.s32 	%r1, %r3, %r4, %r5;
	setp.ge.u32 	%p1, %r1, %r2;
	@%p1 bra 	$L__BB0_2;

	cvta.to.global.u64 	%rd2, %rd1;
	mul.wide.u32 	%rd3, %r1, 4;
	add.s64 	%rd4, %rd2, %rd3;
	ld.global.u32 	%r6, [%rd4];
	add.s32 	%r7, %r6, 1;
	st.global.u32 	[%rd4], %r7;

$L__BB0_2:
	ret;
}
";

/// Launches `f` on `grid` blocks of `block` threads with `(ptr, n)`.
pub fn launch_add_one(f: CUfunction, grid: u32, block: u32, ptr: CUdeviceptr, n: u32) -> CUresult {
    let (mut ptr, mut n) = (ptr, n);
    let mut params = [
        (&mut ptr as *mut CUdeviceptr).cast::<c_void>(),
        (&mut n as *mut u32).cast::<c_void>(),
    ];
    // SAFETY: `params` points at the kernel's two parameters, live locals of its types.
    unsafe {
        cuLaunchKernel(
            f,
            grid,
            1,
            1,
            block,
            1,
            1,
            0,
            null_mut(),
            params.as_mut_ptr(),
            null_mut(),
        )
    }
}

/// Loads [`ADD_ONE`] in the current context: its module and its kernel.
pub fn load_add_one() -> (CUmodule, CUfunction) {
    let (mut m, mut f) = (null_mut(), null_mut());
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
    }
    (m, f)
}
