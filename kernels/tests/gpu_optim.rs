//! optim.cu against the CPU reference, several steps, AdamW over two parameter groups with
//! different weight decay (one launch per group, as the engine calls the CPU per group).
//!
//! Tolerances: the kernels evaluate the CPU's formulas with the CPU's f32 scalars, but the GPU
//! may fuse a multiply and an add (one rounding instead of two), a difference of an ulp or so
//! per step: rtol 1e-5 / atol 1e-6 after three steps.

mod gpu_common;

use std::ops::Range;

use convoy_kernels::cuda::prep::AdamwScalars;
use convoy_kernels::optim::{adamw_update, sgd_update};
use cudarc::driver::PushKernelArg;
use gpu_common::{assert_close, data, device_or_skip, grid_1d};

const N: usize = 100_003;
const STEPS: u64 = 3;
const LR: f32 = 3e-3;

/// (range, weight decay): matrices decay, the rest does not.
fn groups() -> [(Range<usize>, f32); 2] {
    [(0..60_000, 0.1), (60_000..N, 0.0)]
}

#[test]
fn adamw_matches_the_cpu_over_parameter_groups() {
    let Some(dev) = device_or_skip("optim") else {
        return;
    };
    let s = &dev.stream;
    let f = dev.function("optim", "adamw_update").expect("kernel");
    let p0 = data(N, 60);
    let (mut p, mut m, mut v) = (p0.clone(), vec![0.0f32; N], vec![0.0f32; N]);
    let mut p_d = s.clone_htod(&p0).expect("upload");
    let mut m_d = s.alloc_zeros::<f32>(N).expect("alloc");
    let mut v_d = s.alloc_zeros::<f32>(N).expect("alloc");
    for step in 1..=STEPS {
        let g = data(N, 60 + step);
        let g_d = s.clone_htod(&g).expect("upload");
        for (r, wd) in groups() {
            adamw_update(
                &mut p[r.clone()],
                &g[r.clone()],
                &mut m[r.clone()],
                &mut v[r.clone()],
                LR,
                0.9,
                0.95,
                1e-8,
                wd,
                step,
            );
            let sc = AdamwScalars::new(LR, 0.9, 0.95, 1e-8, wd, step);
            let len = r.len() as i64;
            let mut pv = p_d.slice_mut(r.clone());
            let gv = g_d.slice(r.clone());
            let mut mv = m_d.slice_mut(r.clone());
            let mut vv = v_d.slice_mut(r.clone());
            let mut launch = s.launch_builder(&f);
            launch
                .arg(&mut pv)
                .arg(&gv)
                .arg(&mut mv)
                .arg(&mut vv)
                .arg(&len)
                .arg(&sc.beta1)
                .arg(&sc.beta2)
                .arg(&sc.one_minus_beta1)
                .arg(&sc.one_minus_beta2)
                .arg(&sc.eps)
                .arg(&sc.step_size)
                .arg(&sc.bc2_sqrt)
                .arg(&sc.decay);
            // SAFETY: adamw_update(params, grads, m, v [n] f32, n: i64, then nine f32 scalars):
            // four views of the same group range, n = its length; grid-stride, bounds-checked.
            unsafe { launch.launch(grid_1d(r.len())) }.expect("launch");
        }
    }
    assert_close(
        "adamw params",
        &s.clone_dtoh(&p_d).expect("dl"),
        &p,
        1e-5,
        1e-6,
    );
    assert_close("adamw m", &s.clone_dtoh(&m_d).expect("dl"), &m, 1e-5, 1e-6);
    // v ≈ (1-β2)·g² is small: its absolute tolerance scales with it.
    assert_close("adamw v", &s.clone_dtoh(&v_d).expect("dl"), &v, 1e-5, 1e-8);
}

#[test]
fn sgd_matches_the_cpu_plain_momentum_and_nesterov() {
    let Some(dev) = device_or_skip("optim") else {
        return;
    };
    let s = &dev.stream;
    let f = dev.function("optim", "sgd_update").expect("kernel");
    let n_arg = N as i64;
    for (momentum, nesterov) in [(0.0f32, false), (0.9, false), (0.9, true)] {
        let p0 = data(N, 70);
        let mut p = p0.clone();
        let mut buf = vec![0.0f32; if momentum == 0.0 { 0 } else { N }];
        let mut p_d = s.clone_htod(&p0).expect("upload");
        let mut buf_d = s.alloc_zeros::<f32>(N).expect("alloc");
        for step in 1..=STEPS {
            let g = data(N, 70 + step);
            let g_d = s.clone_htod(&g).expect("upload");
            let first = step == 1;
            sgd_update(&mut p, &g, &mut buf, 0.1, momentum, 0.01, nesterov, first);
            let (nesterov_arg, first_arg) = (i32::from(nesterov), i32::from(first));
            let null = 0u64;
            let mut launch = s.launch_builder(&f);
            launch.arg(&mut p_d).arg(&g_d);
            if momentum == 0.0 {
                launch.arg(&null);
            } else {
                launch.arg(&mut buf_d);
            }
            launch
                .arg(&n_arg)
                .arg(&0.1f32)
                .arg(&momentum)
                .arg(&0.01f32)
                .arg(&nesterov_arg)
                .arg(&first_arg);
            // SAFETY: sgd_update(params [n], grads [n], momentum_buf [n] or NULL when
            // momentum == 0, n: i64, lr, momentum, weight_decay: f32, nesterov, first_step: i32):
            // buffers of n floats; with momentum 0 the kernel never touches momentum_buf.
            unsafe { launch.launch(grid_1d(N)) }.expect("launch");
        }
        let what = format!("sgd momentum {momentum} nesterov {nesterov}");
        assert_close(&what, &s.clone_dtoh(&p_d).expect("dl"), &p, 1e-5, 1e-6);
        if momentum != 0.0 {
            assert_close(&what, &s.clone_dtoh(&buf_d).expect("dl"), &buf, 1e-5, 1e-6);
        }
    }
}
