//! A kernel fault, in a process of its own: the error is sticky for the whole context, as on a
//! GPU, so it would fail the other tests of a shared process.

use std::ptr::null_mut;

use convoy_cuda_emu::driver::*;

mod common;
use common::*;

#[test]
fn an_access_past_an_allocation_is_an_illegal_address_until_the_context_is_reset() {
    let _ctx = Ctx::open();
    let (_, f) = load_add_one();
    let a = alloc(64 * 4);
    // 65 elements of a 64-element buffer: thread 64 writes past the end.
    assert_eq!(launch_add_one(f, 1, 65, a, 65), CUDA_ERROR_ILLEGAL_ADDRESS);
    assert_eq!(stats().launches, 1);

    // Sticky: everything on the context now fails with it, freeing excepted.
    let mut p = 0;
    // SAFETY: `p` is a live local CUdeviceptr.
    unsafe {
        assert_eq!(cuCtxSynchronize(), CUDA_ERROR_ILLEGAL_ADDRESS);
        assert_eq!(cuStreamSynchronize(null_mut()), CUDA_ERROR_ILLEGAL_ADDRESS);
        assert_eq!(cuMemAlloc_v2(&mut p, 8), CUDA_ERROR_ILLEGAL_ADDRESS);
    }
    assert_eq!(dtoh(&mut [0; 4], a), CUDA_ERROR_ILLEGAL_ADDRESS);
    assert_eq!(launch_add_one(f, 1, 1, a, 1), CUDA_ERROR_ILLEGAL_ADDRESS);
    assert_eq!(free(a), CUDA_SUCCESS);

    // A reset clears it (and everything of the context).
    // SAFETY: takes no pointer.
    unsafe {
        assert_eq!(cuDevicePrimaryCtxReset_v2(0), CUDA_SUCCESS);
        assert_eq!(cuCtxSynchronize(), CUDA_SUCCESS);
    }
    let (_, f) = load_add_one();
    let a = alloc(4);
    assert_eq!(launch_add_one(f, 1, 1, a, 1), CUDA_SUCCESS);
    assert_eq!(download(a, 4), 1u32.to_le_bytes());
}
