//! layernorm.cu against the CPU reference.
//!
//! Tolerances: the row sums (mean, variance, the two dnorm sums) run in a different order than
//! the CPU's 8 lanes, and the GPU may fuse multiply-adds, so results differ by a few ulp of the
//! summed terms. For the normalised outputs that difference is then multiplied by |norm| (up to
//! ~3 here) and may cancel against the bias, hence an absolute tolerance of 1e-5 on O(1) values.
//! The column sums of dweight/dbias add 300 rows in 64-row chunks: they get the bound of two
//! summation orders (`column_sum_tolerance`) — a flat 1e-5 was once exceeded by the CPU's own
//! rounding (dbias[86]: the GPU's order was within 1.2e-7 of the exact sum, the CPU's 1.6e-5).

mod gpu_common;

use cudarc::driver::PushKernelArg;
use gpu_common::{
    assert_close, assert_close_each, column_sum_tolerance, data, device_or_skip, grid_1d,
    grid_blocks,
};

const N: usize = 300;
const C: usize = 200;
/// Threads per row block: fewer than C, so each thread owns several channels.
const THREADS: u32 = 64;
/// Rows per partial sum of the parameter gradients: N = 4·64 + 44, a ragged last chunk.
const ROWS_PER_BLOCK: usize = 64;

/// Rows with their own offset and scale, so that the normalisation does something.
fn input() -> Vec<f32> {
    data(N * C, 20)
        .iter()
        .enumerate()
        .map(|(i, v)| v * (1.0 + (i / C % 5) as f32) + 0.5)
        .collect()
}

#[test]
fn layernorm_forward_and_backward_match_the_cpu() {
    let Some(dev) = device_or_skip("layernorm") else {
        return;
    };
    let s = &dev.stream;
    let (x, w, bias) = (input(), data(C, 21), data(C, 22));
    let (n, c) = (N as i32, C as i32);
    let x_d = s.clone_htod(&x).expect("upload");
    let w_d = s.clone_htod(&w).expect("upload");
    let b_d = s.clone_htod(&bias).expect("upload");
    let mut out_d = s.alloc_zeros::<f32>(N * C).expect("alloc");
    let mut mean_d = s.alloc_zeros::<f32>(N).expect("alloc");
    let mut rstd_d = s.alloc_zeros::<f32>(N).expect("alloc");
    let f = dev
        .function("layernorm", "layernorm_forward")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut out_d)
        .arg(&mut mean_d)
        .arg(&mut rstd_d)
        .arg(&x_d)
        .arg(&w_d)
        .arg(&b_d)
        .arg(&n)
        .arg(&c);
    // SAFETY: layernorm_forward(out [N, C], mean [N], rstd [N], inp [N, C], weight [C],
    // bias [C], N, C: i32): buffers of exactly those sizes; one block of 64 threads (a multiple
    // of 32, as block_sum needs) per row, static shared memory only.
    unsafe { launch.launch(grid_blocks(N, THREADS)) }.expect("launch");
    let (mut out, mut mean, mut rstd) = (vec![0.0f32; N * C], vec![0.0f32; N], vec![0.0f32; N]);
    convoy_kernels::layernorm::layernorm_forward(
        &mut out, &mut mean, &mut rstd, &x, &w, &bias, N, C,
    );
    let gpu_mean = s.clone_dtoh(&mean_d).expect("download");
    assert_close("layernorm_forward mean", &gpu_mean, &mean, 1e-5, 1e-6);
    assert_close(
        "layernorm_forward rstd",
        &s.clone_dtoh(&rstd_d).expect("download"),
        &rstd,
        1e-5,
        1e-6,
    );
    assert_close(
        "layernorm_forward out",
        &s.clone_dtoh(&out_d).expect("download"),
        &out,
        1e-5,
        1e-5,
    );

    // Backward from the CPU's saved mean and rstd, into non-zero gradients (they accumulate).
    let dout = data(N * C, 23);
    let (dx0, dw0, db0) = (data(N * C, 24), data(C, 25), data(C, 26));
    let dout_d = s.clone_htod(&dout).expect("upload");
    let mean_d = s.clone_htod(&mean).expect("upload");
    let rstd_d = s.clone_htod(&rstd).expect("upload");
    let mut dx_d = s.clone_htod(&dx0).expect("upload");
    let mut dw_d = s.clone_htod(&dw0).expect("upload");
    let mut db_d = s.clone_htod(&db0).expect("upload");

    let f = dev
        .function("layernorm", "layernorm_backward_dinp")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut dx_d)
        .arg(&dout_d)
        .arg(&x_d)
        .arg(&w_d)
        .arg(&mean_d)
        .arg(&rstd_d)
        .arg(&n)
        .arg(&c);
    // SAFETY: layernorm_backward_dinp(dinp [N, C], dout [N, C], inp [N, C], weight [C],
    // mean [N], rstd [N], N, C: i32): sizes as listed; one block of 64 threads per row.
    unsafe { launch.launch(grid_blocks(N, THREADS)) }.expect("launch");

    let r = N.div_ceil(ROWS_PER_BLOCK);
    let mut pdw_d = s.alloc_zeros::<f32>(r * C).expect("alloc");
    let mut pdb_d = s.alloc_zeros::<f32>(r * C).expect("alloc");
    let rows_per_block = ROWS_PER_BLOCK as i32;
    let f = dev
        .function("layernorm", "layernorm_backward_dparams_partial")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut pdw_d)
        .arg(&mut pdb_d)
        .arg(&dout_d)
        .arg(&x_d)
        .arg(&mean_d)
        .arg(&rstd_d)
        .arg(&n)
        .arg(&c)
        .arg(&rows_per_block);
    // SAFETY: layernorm_backward_dparams_partial(partial_dweight [R, C], partial_dbias [R, C],
    // dout [N, C], inp [N, C], mean [N], rstd [N], N, C, rows_per_block: i32) with
    // R = ceil(N / rows_per_block) rows of scratch each; one block per chunk.
    unsafe { launch.launch(grid_blocks(r, THREADS)) }.expect("launch");

    let r_arg = r as i32;
    let f = dev
        .function("layernorm", "layernorm_backward_dparams_reduce")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut dw_d)
        .arg(&mut db_d)
        .arg(&pdw_d)
        .arg(&pdb_d)
        .arg(&r_arg)
        .arg(&c);
    // SAFETY: layernorm_backward_dparams_reduce(dweight [C], dbias [C], partial_dweight [R, C],
    // partial_dbias [R, C], R, C: i32): the scratch just written; one thread per channel.
    unsafe { launch.launch(grid_1d(C)) }.expect("launch");

    let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
    convoy_kernels::layernorm::layernorm_backward(
        &mut dx, &mut dw, &mut db, &dout, &x, &w, &mean, &rstd, N, C,
    );
    assert_close(
        "layernorm_backward dinp",
        &s.clone_dtoh(&dx_d).expect("download"),
        &dx,
        1e-5,
        1e-5,
    );
    let (dw_tol, db_tol) = param_grad_tolerances(&dout, &x, &mean, &rstd, &dw0, &db0);
    assert_close_each(
        "layernorm_backward dweight",
        &s.clone_dtoh(&dw_d).expect("download"),
        &dw,
        &dw_tol,
    );
    assert_close_each(
        "layernorm_backward dbias",
        &s.clone_dtoh(&db_d).expect("download"),
        &db,
        &db_tol,
    );
}

/// Tolerances of dweight and dbias: column sums over the N rows of the normalised input times
/// dout, and of dout, onto their initial values.
fn param_grad_tolerances(
    dout: &[f32],
    x: &[f32],
    mean: &[f32],
    rstd: &[f32],
    dw0: &[f32],
    db0: &[f32],
) -> (Vec<f32>, Vec<f32>) {
    let c = dw0.len();
    let n = mean.len();
    let dw = column_sum_tolerance(n, c, dw0, |i, j| {
        (x[i * c + j] - mean[i]) * rstd[i] * dout[i * c + j]
    });
    let db = column_sum_tolerance(n, c, db0, |i, j| dout[i * c + j]);
    (dw, db)
}
