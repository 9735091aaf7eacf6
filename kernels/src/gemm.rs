//! The one place a GEMM crate is called. `gemm` (sarah-quinones) was chosen over
//! `matrixmultiply` because it runs on the caller's rayon pool, so `threads` in a job spec
//! bounds every kernel, and it was at least as fast at the model's shapes (BENCHMARKS.md).

use gemm::Parallelism;

/// A read-only matrix operand: a slice and its row and column strides (a transpose is just
/// swapped strides, never a copy).
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

/// Below this many multiply-adds a single thread is faster than waking the pool.
const PARALLEL_MIN_WORK: usize = 1 << 18;

/// c [m, n] (row-major, contiguous) = a [m, k] · b [k, n], or `+=` when `accumulate`.
pub(crate) fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: Mat<'_>,
    b: Mat<'_>,
    c: &mut [f32],
    accumulate: bool,
) {
    assert!(c.len() >= m * n, "output too small");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    let last = |x: Mat<'_>, rows: usize, cols: usize| (rows - 1) * x.rs + (cols - 1) * x.cs;
    assert!(
        last(a, m, k) < a.data.len() && last(b, k, n) < b.data.len(),
        "operand too small for its shape"
    );
    let parallelism = if m * n * k >= PARALLEL_MIN_WORK {
        Parallelism::Rayon(rayon::current_num_threads())
    } else {
        Parallelism::None
    };
    // SAFETY: the asserts above keep every element the strides reach inside its slice; `c` is
    // borrowed mutably and cannot alias `a` or `b`.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
