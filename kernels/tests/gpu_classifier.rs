//! classifier.cu against the CPU reference (loss.rs).
//!
//! Tolerances: the row max is exact, but the row sum of exponentials runs in a different order
//! than the CPU's 8 lanes and CUDA's expf differs from the CPU's by a few ulp: rtol 1e-5 /
//! atol 1e-6 on the losses (≈ ln V), the probabilities and dlogits.

mod gpu_common;

use convoy_kernels::IGNORE_INDEX;
use cudarc::driver::{DevicePtrMut, PushKernelArg};
use gpu_common::{assert_close, data, device_or_skip, grid_blocks};

const N: usize = 64;
const V: usize = 1000;
const VP: usize = 1024;
const THREADS: u32 = 256;
const SCALE: f32 = 0.37;

/// Logits in [-4, 4) with NaN in the padding columns: any read of them would poison a row.
fn logits() -> Vec<f32> {
    data(N * VP, 50)
        .iter()
        .enumerate()
        .map(|(i, &x)| if i % VP >= V { f32::NAN } else { 4.0 * x })
        .collect()
}

/// Targets below V, every fifth row ignored; row 3 targets the last real column.
fn targets() -> Vec<u32> {
    data(N, 51)
        .iter()
        .enumerate()
        .map(|(r, &x)| match r {
            _ if r % 5 == 0 => IGNORE_INDEX,
            3 => V as u32 - 1,
            _ => ((x + 1.0) * 0.5 * V as f32) as u32 % V as u32,
        })
        .collect()
}

#[test]
fn crossentropy_and_softmax_match_the_cpu() {
    let Some(dev) = device_or_skip("classifier") else {
        return;
    };
    let s = &dev.stream;
    let (x, tg) = (logits(), targets());
    let (n, v, vp) = (N as i32, V as i32, VP as i32);
    let x_d = s.clone_htod(&x).expect("upload");
    let tg_d = s.clone_htod(&tg).expect("upload");
    let mut losses_d = s.alloc_zeros::<f32>(N).expect("alloc");
    // dlogits starts as garbage: the kernel overwrites every entry.
    let mut dlogits_d = s.clone_htod(&vec![f32::NAN; N * VP]).expect("upload");
    let f = dev
        .function("classifier", "crossentropy_forward_backward")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut losses_d)
        .arg(&mut dlogits_d)
        .arg(&x_d)
        .arg(&tg_d)
        .arg(&n)
        .arg(&v)
        .arg(&vp)
        .arg(&SCALE);
    // SAFETY: crossentropy_forward_backward(losses [N], dlogits [N, Vp], logits [N, Vp],
    // targets [N] u32, N, V, Vp: i32, dloss_scale: f32): buffers of exactly those sizes, every
    // target < V or IGNORE_INDEX; one block of 256 threads per row.
    unsafe { launch.launch(grid_blocks(N, THREADS)) }.expect("launch");
    let (mut losses, mut dlogits) = (vec![0.0f32; N], vec![0.0f32; N * VP]);
    let (sum, count) = convoy_kernels::loss::crossentropy_forward_backward(
        &mut losses,
        Some(&mut dlogits),
        &x,
        &tg,
        N,
        V,
        VP,
        SCALE,
    );
    let gpu_losses = s.clone_dtoh(&losses_d).expect("download");
    let gpu_dlogits = s.clone_dtoh(&dlogits_d).expect("download");
    assert_close("crossentropy losses", &gpu_losses, &losses, 1e-5, 1e-6);
    assert_close("crossentropy dlogits", &gpu_dlogits, &dlogits, 1e-5, 1e-6);
    for r in 0..N {
        let row = &gpu_dlogits[r * VP..(r + 1) * VP];
        assert!(row[V..].iter().all(|&g| g == 0.0), "padding of row {r}");
        if tg[r] == IGNORE_INDEX {
            assert!(
                row.iter().all(|&g| g == 0.0) && gpu_losses[r] == 0.0,
                "row {r}"
            );
        }
    }
    // The host's total, summed like the CPU's.
    let (gsum, gcount) = tg
        .iter()
        .zip(&gpu_losses)
        .filter(|(t, _)| **t != IGNORE_INDEX)
        .fold((0.0f64, 0usize), |(s, k), (_, &l)| {
            (s + f64::from(l), k + 1)
        });
    assert_eq!(gcount, count);
    assert!((gsum - sum).abs() <= 1e-5 * sum.abs(), "{gsum} vs {sum}");

    // Without dlogits (NULL), and fewer blocks than rows: the same losses, bit for bit.
    let mut losses2_d = s.alloc_zeros::<f32>(N).expect("alloc");
    let null = 0u64;
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut losses2_d)
        .arg(&null)
        .arg(&x_d)
        .arg(&tg_d)
        .arg(&n)
        .arg(&v)
        .arg(&vp)
        .arg(&SCALE);
    // SAFETY: as above with dlogits = NULL (a 64-bit zero in the pointer's slot), which the
    // kernel checks before any write; 5 blocks for the 64 rows (the grid-stride loop: any grid
    // works).
    unsafe { launch.launch(grid_blocks(5, THREADS)) }.expect("launch");
    // A block's second and later rows reuse its shared scratch: the same losses, bit for bit.
    assert_eq!(s.clone_dtoh(&losses2_d).expect("download"), gpu_losses);

    // In place (dlogits = logits): the same results, bit for bit.
    let mut inplace_d = s.clone_htod(&x).expect("upload");
    let mut losses3_d = s.alloc_zeros::<f32>(N).expect("alloc");
    {
        let (ptr, _sync) = inplace_d.device_ptr_mut(s);
        let mut launch = s.launch_builder(&f);
        launch
            .arg(&mut losses3_d)
            .arg(&ptr)
            .arg(&ptr)
            .arg(&tg_d)
            .arg(&n)
            .arg(&v)
            .arg(&vp)
            .arg(&SCALE);
        // SAFETY: as the first launch, with dlogits and logits the same [N, Vp] buffer, which
        // the kernel supports (a row is read entirely before it is written); the pointer stays
        // valid while `_sync` borrows the buffer.
        unsafe { launch.launch(grid_blocks(N, THREADS)) }.expect("launch");
    }
    assert_eq!(s.clone_dtoh(&losses3_d).expect("download"), gpu_losses);
    let inplace = s.clone_dtoh(&inplace_d).expect("download");
    assert!(
        inplace
            .iter()
            .zip(&gpu_dlogits)
            .all(|(a, b)| a.to_bits() == b.to_bits()),
        "in-place dlogits differ"
    );

    // softmax_forward.
    let mut probs_d = s.clone_htod(&vec![f32::NAN; N * VP]).expect("upload");
    let f = dev
        .function("classifier", "softmax_forward")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch.arg(&mut probs_d).arg(&x_d).arg(&n).arg(&v).arg(&vp);
    // SAFETY: softmax_forward(probs [N, Vp], logits [N, Vp], N, V, Vp: i32): two buffers of
    // N·Vp floats; one block per row.
    unsafe { launch.launch(grid_blocks(N, THREADS)) }.expect("launch");
    let mut probs = vec![0.0f32; N * VP];
    convoy_kernels::loss::softmax_forward(&mut probs, &x, N, V, VP);
    assert_close(
        "softmax_forward",
        &s.clone_dtoh(&probs_d).expect("download"),
        &probs,
        1e-5,
        1e-6,
    );
}

#[test]
fn crossentropy_out_of_range_target_gives_nan_not_a_stray_read() {
    let Some(dev) = device_or_skip("classifier") else {
        return;
    };
    let s = &dev.stream;
    let x_d = s.clone_htod(&data(2 * 8, 52)).expect("upload");
    let tg_d = s.clone_htod(&[1u32, 6]).expect("upload");
    let mut losses_d = s.alloc_zeros::<f32>(2).expect("alloc");
    let mut d_d = s.alloc_zeros::<f32>(2 * 8).expect("alloc");
    let (n, v, vp) = (2i32, 6i32, 8i32);
    let f = dev
        .function("classifier", "crossentropy_forward_backward")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut losses_d)
        .arg(&mut d_d)
        .arg(&x_d)
        .arg(&tg_d)
        .arg(&n)
        .arg(&v)
        .arg(&vp)
        .arg(&1.0f32);
    // SAFETY: crossentropy_forward_backward(losses [2], dlogits [2, 8], logits [2, 8],
    // targets [2], N=2, V=6, Vp=8, 1.0): target 6 ≥ V, which the kernel checks before reading.
    unsafe { launch.launch(grid_blocks(2, 32)) }.expect("launch");
    let losses = s.clone_dtoh(&losses_d).expect("download");
    let d = s.clone_dtoh(&d_d).expect("download");
    assert!(losses[0].is_finite() && losses[1].is_nan(), "{losses:?}");
    assert!(d[8..].iter().all(|g| g.is_nan()), "{d:?}");
}
