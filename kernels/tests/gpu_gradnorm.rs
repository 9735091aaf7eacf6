//! gradnorm.cu against the CPU reference.
//!
//! Tolerances: squares are summed in f64 on both sides, in a different order, so the f32 norm
//! agrees to rounding (rtol 1e-6); clipping multiplies by the same f32 scale, up to that ulp of
//! the norm.

mod gpu_common;

use convoy_kernels::cuda::Device;
use convoy_kernels::cuda::prep::gradnorm_partials;
use convoy_kernels::gradnorm::{clip_grads, global_norm};
use cudarc::driver::{CudaSlice, PushKernelArg};
use gpu_common::{assert_close, data, device_or_skip, grid_1d, grid_blocks};

const THREADS: u32 = 256;

/// The two-pass norm of `g_d` (n floats) on the device, the first pass on `blocks` blocks.
fn device_norm(dev: &Device, g_d: &CudaSlice<f32>, n: usize, blocks: usize) -> CudaSlice<f32> {
    let s = &dev.stream;
    let p = gradnorm_partials(n);
    let mut partials_d = s.alloc_zeros::<f64>(p.max(1)).expect("alloc");
    let (n_arg, p_arg) = (n as i64, p as i64);
    if p > 0 {
        let f = dev
            .function("gradnorm", "global_norm_partials")
            .expect("kernel");
        let mut launch = s.launch_builder(&f);
        launch.arg(&mut partials_d).arg(g_d).arg(&n_arg);
        // SAFETY: global_norm_partials(partials [P] f64, grads [n] f32, n: i64), with
        // P = ceil(n / GRADNORM_CHUNK) = gradnorm_partials(n) doubles; 256 threads (a multiple
        // of 32), grid-stride over the chunks so any block count is valid.
        unsafe { launch.launch(grid_blocks(blocks, THREADS)) }.expect("launch");
    }
    let mut norm_d = s.alloc_zeros::<f32>(1).expect("alloc");
    let f = dev
        .function("gradnorm", "global_norm_finish")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch.arg(&mut norm_d).arg(&partials_d).arg(&p_arg);
    // SAFETY: global_norm_finish(norm [1] f32, partials [P] f64, P: i64): the buffer holds at
    // least P doubles (one when P = 0, then unread); exactly one block, as the kernel requires.
    unsafe { launch.launch(grid_blocks(1, THREADS)) }.expect("launch");
    norm_d
}

fn clip(dev: &Device, g_d: &mut CudaSlice<f32>, n: usize, norm_d: &CudaSlice<f32>, max_norm: f32) {
    let s = &dev.stream;
    let n_arg = n as i64;
    let f = dev.function("gradnorm", "clip_grads").expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch.arg(g_d).arg(&n_arg).arg(norm_d).arg(&max_norm);
    // SAFETY: clip_grads(grads [n] f32, n: i64, norm [1] f32, max_norm: f32): a buffer of n
    // floats and one of one float; grid-stride, bounds-checked.
    unsafe { launch.launch(grid_1d(n)) }.expect("launch");
}

#[test]
fn global_norm_and_clipping_match_the_cpu() {
    let Some(dev) = device_or_skip("gradnorm") else {
        return;
    };
    let s = &dev.stream;
    // 61 full chunks and a ragged last one.
    let n = 1_000_003usize;
    let g: Vec<f32> = data(n, 80).iter().map(|x| 3.0 * x).collect();
    let mut g_d = s.clone_htod(&g).expect("upload");
    let cpu_norm = global_norm(&g);
    let norm_d = device_norm(&dev, &g_d, n, gradnorm_partials(n));
    let norm = s.clone_dtoh(&norm_d).expect("download")[0];
    assert_close("global_norm", &[norm], &[cpu_norm], 1e-6, 0.0);
    // Deterministic, and independent of the grid: 7 blocks striding over the chunks give the
    // same bits.
    let again = s
        .clone_dtoh(&device_norm(&dev, &g_d, n, 7))
        .expect("download")[0];
    assert_eq!(again.to_bits(), norm.to_bits());

    // Above the threshold nothing changes, bit for bit.
    clip(&dev, &mut g_d, n, &norm_d, 10.0 * cpu_norm);
    assert_eq!(s.clone_dtoh(&g_d).expect("download"), g);
    // A NaN norm clips nothing either.
    let nan_d = s.clone_htod(&[f32::NAN]).expect("upload");
    clip(&dev, &mut g_d, n, &nan_d, 1.0);
    assert_eq!(s.clone_dtoh(&g_d).expect("download"), g);
    // Below it, every gradient is scaled like the CPU's.
    let max_norm = cpu_norm / 4.0;
    clip(&dev, &mut g_d, n, &norm_d, max_norm);
    let mut cpu = g.clone();
    clip_grads(&mut cpu, cpu_norm, max_norm);
    assert_close(
        "clip_grads",
        &s.clone_dtoh(&g_d).expect("download"),
        &cpu,
        1e-6,
        0.0,
    );

    // Empty and tiny buffers.
    let tiny_d = s.clone_htod(&[3.0f32, -4.0]).expect("upload");
    let tiny = s
        .clone_dtoh(&device_norm(&dev, &tiny_d, 2, 1))
        .expect("download")[0];
    assert_eq!(tiny, 5.0);
    let empty = s
        .clone_dtoh(&device_norm(&dev, &tiny_d, 0, 1))
        .expect("download")[0];
    assert_eq!(empty, 0.0);
}
