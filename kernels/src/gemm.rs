//! The one entry point to the GEMM crate (`gemm`, chosen over `matrixmultiply` by
//! `examples/gemm_crates.rs`; see the GEMM section of BENCHMARKS.md).
//!
//! `gemm` runs on the current rayon pool and splits only the output (never the `k` sum) between
//! threads, with blocking that does not depend on the thread count, so its results are
//! bit-identical for any pool size (checked by the determinism tests).

/// A read-only matrix inside a slice: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub(crate) struct View<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

impl<'a> View<'a> {
    /// The row-major `[rows, cols]` matrix that is all of `data`.
    pub(crate) fn new(data: &'a [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "gemm: matrix of the wrong size");
        View {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }

    /// A `[rows, cols]` block starting at `data[0]` whose rows are `rs` apart, e.g. one head's
    /// queries inside `qkv [T, 3C]`.
    pub(crate) fn strided(data: &'a [f32], rows: usize, cols: usize, rs: usize) -> Self {
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * rs + cols <= data.len(),
            "gemm: block out of bounds"
        );
        View {
            data,
            rows,
            cols,
            rs,
            cs: 1,
        }
    }

    /// The transpose (no copy).
    pub(crate) fn t(self) -> Self {
        View {
            data: self.data,
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
        }
    }
}

/// A writable matrix inside a slice, with unit column stride and rows `rs ≥ cols` apart.
pub(crate) struct ViewMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
}

impl<'a> ViewMut<'a> {
    /// The row-major `[rows, cols]` matrix that is all of `data`.
    pub(crate) fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Self {
        assert_eq!(data.len(), rows * cols, "gemm: matrix of the wrong size");
        ViewMut {
            data,
            rows,
            cols,
            rs: cols,
        }
    }

    /// A `[rows, cols]` block starting at `data[0]` whose rows are `rs ≥ cols` apart.
    pub(crate) fn strided(data: &'a mut [f32], rows: usize, cols: usize, rs: usize) -> Self {
        assert!(rs >= cols, "gemm: overlapping output rows");
        assert!(
            rows == 0 || cols == 0 || (rows - 1) * rs + cols <= data.len(),
            "gemm: block out of bounds"
        );
        ViewMut {
            data,
            rows,
            cols,
            rs,
        }
    }
}

/// Which threads a product may use.
#[derive(Clone, Copy)]
pub(crate) enum Threads {
    /// The current rayon pool (large products).
    Pool,
    /// The calling thread only (small products inside an already parallel loop).
    One,
}

/// `c = alpha·a·b`, or `c += alpha·a·b` when `accumulate` (then `c` is read; otherwise it is only
/// written and may hold garbage).
pub(crate) fn sgemm(c: ViewMut, a: View, b: View, alpha: f32, accumulate: bool, threads: Threads) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "gemm: shapes do not chain"
    );
    let parallelism = match threads {
        Threads::Pool => gemm::Parallelism::Rayon(0),
        Threads::One => gemm::Parallelism::None,
    };
    // SAFETY: the view constructors checked that every element (i, j) of each matrix lies inside
    // its slice, and `c`'s rows do not overlap; `c` is borrowed mutably, so it aliases neither
    // `a` nor `b`. `gemm` computes dst = 1·dst + alpha·lhs·rhs, reading dst only when asked to.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.data.as_mut_ptr(),
            1,
            c.rs as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            1.0,
            alpha,
            false,
            false,
            false,
            parallelism,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{rng, uniform};

    #[test]
    fn strided_transposed_scaled_accumulating_product_matches_loops() {
        let mut r = rng(70);
        // a: the [5, 3] block at columns 2..5 of a [5, 7] buffer, used transposed ([3, 5]);
        // b: [5, 4] row-major; c: the [3, 4] block at columns 1..5 of a [3, 6] buffer.
        let (abuf, b, c0) = (
            uniform(&mut r, 35),
            uniform(&mut r, 20),
            uniform(&mut r, 18),
        );
        let mut c = c0.clone();
        let a = View::strided(&abuf[2..], 5, 3, 7).t();
        sgemm(
            ViewMut::strided(&mut c[1..], 3, 4, 6),
            a,
            View::new(&b, 5, 4),
            0.5,
            true,
            Threads::Pool,
        );
        for i in 0..3 {
            for j in 0..6 {
                let want = if (1..5).contains(&j) {
                    let dot: f32 = (0..5).map(|k| abuf[k * 7 + 2 + i] * b[k * 4 + j - 1]).sum();
                    c0[i * 6 + j] + 0.5 * dot
                } else {
                    c0[i * 6 + j] // outside the block: untouched
                };
                assert!(
                    (c[i * 6 + j] - want).abs() < 1e-5,
                    "c[{i}, {j}] = {}, want {want}",
                    c[i * 6 + j]
                );
            }
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn rejects_blocks_past_the_end() {
        View::strided(&[0.0; 10], 3, 3, 4); // needs (3 - 1)·4 + 3 = 11 elements
    }
}
