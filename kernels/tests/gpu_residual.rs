//! residual.cu against the CPU reference (exact: one addition per element).

mod gpu_common;

use cudarc::driver::PushKernelArg;
use gpu_common::{assert_close, data, device_or_skip, grid_1d};

#[test]
fn residual_forward_and_backward_match_the_cpu() {
    let Some(dev) = device_or_skip("residual") else {
        return;
    };
    let n = 100_003usize;
    let (a, b, dout) = (data(n, 1), data(n, 2), data(n, 3));
    let s = &dev.stream;
    let a_d = s.clone_htod(&a).expect("upload");
    let b_d = s.clone_htod(&b).expect("upload");
    let mut out_d = s.alloc_zeros::<f32>(n).expect("alloc");
    let f = dev
        .function("residual", "residual_forward")
        .expect("kernel");
    let n_arg = n as i64;
    let mut launch = s.launch_builder(&f);
    launch.arg(&mut out_d).arg(&a_d).arg(&b_d).arg(&n_arg);
    // SAFETY: residual_forward(out [n], a [n], b [n], n): three device buffers of n floats and
    // n as i64, matching the kernel's parameters; one thread per element, bounds-checked.
    unsafe { launch.launch(grid_1d(n)) }.expect("launch");
    let out = s.clone_dtoh(&out_d).expect("download");
    let mut cpu = vec![0.0f32; n];
    convoy_kernels::residual::residual_forward(&mut cpu, &a, &b);
    assert_close("residual_forward", &out, &cpu, 0.0, 0.0);

    let mut da_d = s.clone_htod(&a).expect("upload");
    let mut db_d = s.clone_htod(&b).expect("upload");
    let dout_d = s.clone_htod(&dout).expect("upload");
    let f = dev
        .function("residual", "residual_backward")
        .expect("kernel");
    let mut launch = s.launch_builder(&f);
    launch
        .arg(&mut da_d)
        .arg(&mut db_d)
        .arg(&dout_d)
        .arg(&n_arg);
    // SAFETY: residual_backward(da [n], db [n], dout [n], n): buffers of n floats each.
    unsafe { launch.launch(grid_1d(n)) }.expect("launch");
    let (mut da, mut db) = (a.clone(), b.clone());
    convoy_kernels::residual::residual_backward(&mut da, &mut db, &dout);
    assert_close(
        "residual_backward da",
        &s.clone_dtoh(&da_d).expect("dl"),
        &da,
        0.0,
        0.0,
    );
    assert_close(
        "residual_backward db",
        &s.clone_dtoh(&db_d).expect("dl"),
        &db,
        0.0,
        0.0,
    );
}
