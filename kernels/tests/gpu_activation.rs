//! activation.cu against the CPU reference.
//!
//! Tolerances: CUDA's tanhf/expf and the CPU's Cephes polynomials differ by a few ulp (both are
//! within ~3e-7 relative of the true value), hence rtol 1e-5 / atol 1e-6. The GELU backward
//! recomputes tanh and takes 1 - t² where |t| → 1: the cancellation turns those ulp of t into
//! up to ~1e-6 absolute (times |x|·dt ≤ ~3), hence atol 4e-6 there.

mod gpu_common;

use cudarc::driver::PushKernelArg;
use gpu_common::{assert_close, data, device_or_skip, grid_1d};

type Forward = fn(&mut [f32], &[f32]);
type Backward = fn(&mut [f32], &[f32], &[f32]);

/// (family kernel prefix, CPU forward, CPU backward, backward takes the forward's output
/// rather than its input, backward atol)
const CASES: [(&str, Forward, Backward, bool, f32); 4] = {
    use convoy_kernels::activation::*;
    [
        ("gelu", gelu_forward, gelu_backward, false, 4e-6),
        ("relu", relu_forward, relu_backward, false, 1e-6),
        ("tanh", tanh_forward, tanh_backward, true, 1e-6),
        ("sigmoid", sigmoid_forward, sigmoid_backward, true, 1e-6),
    ]
};

#[test]
fn activations_forward_and_backward_match_the_cpu() {
    let Some(dev) = device_or_skip("activation") else {
        return;
    };
    let s = &dev.stream;
    let n = 100_003usize;
    let n_arg = n as i64;
    // Inputs over [-6, 6], through every regime of each function.
    let x: Vec<f32> = data(n, 30).iter().map(|v| 6.0 * v).collect();
    let (dout, d0) = (data(n, 31), data(n, 32));
    let x_d = s.clone_htod(&x).expect("upload");
    let dout_d = s.clone_htod(&dout).expect("upload");
    for (name, cpu_fwd, cpu_bwd, uses_out, bwd_atol) in CASES {
        let mut out_d = s.alloc_zeros::<f32>(n).expect("alloc");
        let f = dev
            .function("activation", &format!("{name}_forward"))
            .expect("kernel");
        let mut launch = s.launch_builder(&f);
        launch.arg(&mut out_d).arg(&x_d).arg(&n_arg);
        // SAFETY: <name>_forward(out [n], inp [n], n: i64): two device buffers of n floats;
        // grid-stride loop, bounds-checked.
        unsafe { launch.launch(grid_1d(n)) }.expect("launch");
        let mut out = vec![0.0f32; n];
        cpu_fwd(&mut out, &x);
        let gpu_out = s.clone_dtoh(&out_d).expect("download");
        assert_close(&format!("{name}_forward"), &gpu_out, &out, 1e-5, 1e-6);

        // The backward reads the CPU's forward output (tanh, sigmoid), so that it is compared
        // on identical inputs.
        let saved_d = s
            .clone_htod(if uses_out { &out } else { &x })
            .expect("upload");
        let mut dinp_d = s.clone_htod(&d0).expect("upload");
        let f = dev
            .function("activation", &format!("{name}_backward"))
            .expect("kernel");
        let mut launch = s.launch_builder(&f);
        launch
            .arg(&mut dinp_d)
            .arg(&saved_d)
            .arg(&dout_d)
            .arg(&n_arg);
        // SAFETY: <name>_backward(dinp [n], inp or out [n], dout [n], n: i64): three device
        // buffers of n floats; grid-stride loop, bounds-checked.
        unsafe { launch.launch(grid_1d(n)) }.expect("launch");
        let mut dinp = d0.clone();
        cpu_bwd(&mut dinp, if uses_out { &out } else { &x }, &dout);
        assert_close(
            &format!("{name}_backward"),
            &s.clone_dtoh(&dinp_d).expect("download"),
            &dinp,
            1e-5,
            bwd_atol,
        );
    }
}
