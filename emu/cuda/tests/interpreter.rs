//! The interpreter's own checks, on small hand-written kernels: what it computes, and the
//! faults a GPU would hide (out-of-bounds accesses, barriers in divergent code, divergent warp
//! collectives, shared-memory races, unsupported instructions). The kernels of convoy itself
//! run under it in the emulated GPU test pass (emu/README.md).

use convoy_cuda_emu::{Checks, Dims, EmuError, Memory, Module, launch};

const HEAD: &str = ".version 8.4\n.target sm_80\n.address_size 64\n";

fn module(body: &str) -> Module {
    Module::parse(&format!("{HEAD}{body}")).expect("parses")
}

fn dims(blocks: u32, threads: u32) -> Dims {
    Dims {
        grid: [blocks, 1, 1],
        block: [threads, 1, 1],
        dynamic_shared: 0,
    }
}

fn f32s(mem: &Memory, ptr: u64, n: usize) -> Vec<f32> {
    let mut b = vec![0u8; n * 4];
    mem.read(ptr, &mut b).expect("read back");
    b.chunks(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn put_f32s(mem: &mut Memory, x: &[f32]) -> u64 {
    let p = mem.alloc(x.len() as u64 * 4).expect("alloc");
    let bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    mem.write(p, &bytes).expect("write");
    p
}

/// out[i] = a[i] + b[i] for i < n: one thread per element.
const ADD: &str = r#"
.visible .entry add(
	.param .u64 add_param_0,
	.param .u64 add_param_1,
	.param .u64 add_param_2,
	.param .u32 add_param_3
)
{
	.reg .pred 	%p<2>;
	.reg .f32 	%f<4>;
	.reg .b32 	%r<6>;
	.reg .b64 	%rd<11>;
	ld.param.u64 	%rd1, [add_param_0];
	ld.param.u64 	%rd2, [add_param_1];
	ld.param.u64 	%rd3, [add_param_2];
	ld.param.u32 	%r2, [add_param_3];
	mov.u32 	%r3, %ctaid.x;
	mov.u32 	%r4, %ntid.x;
	mov.u32 	%r5, %tid.x;
	mad.lo.s32 	%r1, %r3, %r4, %r5;
	setp.ge.s32 	%p1, %r1, %r2;
	@%p1 bra 	$L__BB0_2;
	cvta.to.global.u64 	%rd4, %rd2;
	mul.wide.s32 	%rd5, %r1, 4;
	add.s64 	%rd6, %rd4, %rd5;
	cvta.to.global.u64 	%rd7, %rd3;
	add.s64 	%rd8, %rd7, %rd5;
	ld.global.f32 	%f1, [%rd6];
	ld.global.f32 	%f2, [%rd8];
	add.f32 	%f3, %f1, %f2;
	cvta.to.global.u64 	%rd9, %rd1;
	add.s64 	%rd10, %rd9, %rd5;
	st.global.f32 	[%rd10], %f3;
$L__BB0_2:
	ret;
}
"#;

fn run_add(n: u32, launched: u32, len: usize) -> Result<Vec<f32>, EmuError> {
    let m = module(ADD);
    let k = m.kernel("add").expect("kernel");
    let mut mem = Memory::new();
    let a: Vec<f32> = (0..len).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..len).map(|i| 0.5 * i as f32).collect();
    let (pa, pb) = (put_f32s(&mut mem, &a), put_f32s(&mut mem, &b));
    let out = mem.alloc(len as u64 * 4).expect("alloc");
    let params = [
        out.to_le_bytes().to_vec(),
        pa.to_le_bytes().to_vec(),
        pb.to_le_bytes().to_vec(),
        n.to_le_bytes().to_vec(),
    ];
    let refs: Vec<&[u8]> = params.iter().map(|p| p.as_slice()).collect();
    launch(
        &k,
        dims(launched.div_ceil(64), 64),
        &refs,
        &mut mem,
        Checks::default(),
    )?;
    Ok(f32s(&mem, out, len))
}

#[test]
fn a_guarded_elementwise_kernel_computes_every_element() {
    let out = run_add(100, 100, 100).unwrap();
    for (i, v) in out.iter().enumerate() {
        assert_eq!(*v, 1.5 * i as f32);
    }
}

#[test]
fn a_read_past_the_end_of_an_allocation_is_a_fault_naming_the_thread_and_line() {
    // n says 101 elements but the buffers hold 100: thread 100 reads past the end.
    let err = run_add(101, 101, 100).unwrap_err().to_string();
    assert!(err.contains("out-of-bounds global read"), "{err}");
    assert!(err.contains("block (1,0,0), thread (36,0,0)"), "{err}");
    assert!(err.contains("ld.global.f32"), "{err}");
}

#[test]
fn unsupported_instructions_are_refused_at_load_with_their_line() {
    let text = format!(
        "{HEAD}.visible .entry k(\n)\n{{\n\t.reg .b32 %r<3>;\n\tpopc.b32 %r1, %r2;\n\tret;\n}}\n"
    );
    let err = Module::parse(&text).unwrap_err().to_string();
    assert!(err.contains("PTX line 8"), "{err}");
    assert!(err.contains("popc.b32"), "{err}");
}

/// Threads below `limit` (a parameter) return before the barrier.
const EARLY_RETURN: &str = r#"
.visible .entry k(
	.param .u32 k_param_0
)
{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<3>;
	ld.param.u32 	%r1, [k_param_0];
	mov.u32 	%r2, %tid.x;
	setp.lt.u32 	%p1, %r2, %r1;
	@%p1 bra 	$L__BB0_2;
	bar.sync 	0;
$L__BB0_2:
	ret;
}
"#;

#[test]
fn a_barrier_after_an_early_return_is_reported_as_a_deadlock() {
    let m = module(EARLY_RETURN);
    let k = m.kernel("k").unwrap();
    let mut mem = Memory::new();
    let none = 0u32.to_le_bytes();
    launch(&k, dims(2, 64), &[&none], &mut mem, Checks::default()).expect("all threads reach it");
    let all = 64u32.to_le_bytes();
    launch(&k, dims(2, 64), &[&all], &mut mem, Checks::default()).expect("no thread reaches it");
    let some = 40u32.to_le_bytes();
    let err = launch(&k, dims(2, 64), &[&some], &mut mem, Checks::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("deadlock"), "{err}");
    assert!(err.contains("bar.sync"), "{err}");
}

/// A butterfly sum over the warp; lanes below `limit` skip it.
const WARP_SUM: &str = r#"
.visible .entry k(
	.param .u64 k_param_0,
	.param .u32 k_param_1
)
{
	.reg .pred 	%p<3>;
	.reg .f32 	%f<4>;
	.reg .b32 	%r<8>;
	.reg .b64 	%rd<4>;
	ld.param.u64 	%rd1, [k_param_0];
	ld.param.u32 	%r1, [k_param_1];
	mov.u32 	%r2, %tid.x;
	cvt.rn.f32.s32 	%f1, %r2;
	setp.lt.u32 	%p1, %r2, %r1;
	@%p1 bra 	$L__BB0_2;
	mov.b32 	%r3, %f1;
	shfl.sync.bfly.b32 	%r4|%p2, %r3, 16, 31, -1;
	mov.b32 	%f2, %r4;
	add.f32 	%f1, %f1, %f2;
	mov.b32 	%r3, %f1;
	shfl.sync.bfly.b32 	%r4|%p2, %r3, 8, 31, -1;
	mov.b32 	%f2, %r4;
	add.f32 	%f1, %f1, %f2;
	mov.b32 	%r3, %f1;
	shfl.sync.bfly.b32 	%r4|%p2, %r3, 4, 31, -1;
	mov.b32 	%f2, %r4;
	add.f32 	%f1, %f1, %f2;
	mov.b32 	%r3, %f1;
	shfl.sync.bfly.b32 	%r4|%p2, %r3, 2, 31, -1;
	mov.b32 	%f2, %r4;
	add.f32 	%f1, %f1, %f2;
	mov.b32 	%r3, %f1;
	shfl.sync.bfly.b32 	%r4|%p2, %r3, 1, 31, -1;
	mov.b32 	%f2, %r4;
	add.f32 	%f1, %f1, %f2;
$L__BB0_2:
	mul.wide.u32 	%rd2, %r2, 4;
	cvta.to.global.u64 	%rd3, %rd1;
	add.s64 	%rd3, %rd3, %rd2;
	st.global.f32 	[%rd3], %f1;
	ret;
}
"#;

#[test]
fn shuffles_exchange_values_across_the_warp_and_refuse_missing_lanes() {
    let m = module(WARP_SUM);
    let k = m.kernel("k").unwrap();
    let mut mem = Memory::new();
    let out = mem.alloc(32 * 4).unwrap();
    let p = out.to_le_bytes();
    launch(
        &k,
        dims(1, 32),
        &[&p, &0u32.to_le_bytes()],
        &mut mem,
        Checks::default(),
    )
    .unwrap();
    assert_eq!(
        f32s(&mem, out, 32),
        vec![496.0; 32],
        "0 + 1 + ... + 31 in every lane"
    );
    let err = launch(
        &k,
        dims(1, 32),
        &[&p, &3u32.to_le_bytes()],
        &mut mem,
        Checks::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("divergent warp collective"), "{err}");
}

/// Each thread writes its shared slot, then (without a barrier when `skip` is 1) reads its
/// neighbour's.
const NEIGHBOUR: &str = r#"
.visible .entry k(
	.param .u64 k_param_0,
	.param .u32 k_param_1
)
{
	.reg .pred 	%p<2>;
	.reg .b32 	%r<8>;
	.reg .b64 	%rd<8>;
	.shared .align 4 .b8 slots[256];
	ld.param.u64 	%rd1, [k_param_0];
	ld.param.u32 	%r1, [k_param_1];
	mov.u32 	%r2, %tid.x;
	mov.u64 	%rd2, slots;
	mul.wide.u32 	%rd3, %r2, 4;
	add.s64 	%rd4, %rd2, %rd3;
	st.shared.u32 	[%rd4], %r2;
	setp.eq.s32 	%p1, %r1, 1;
	@%p1 bra 	$L__BB0_2;
	bar.sync 	0;
$L__BB0_2:
	add.s32 	%r3, %r2, 1;
	and.b32 	%r3, %r3, 63;
	mul.wide.u32 	%rd5, %r3, 4;
	add.s64 	%rd5, %rd2, %rd5;
	ld.shared.u32 	%r4, [%rd5];
	cvta.to.global.u64 	%rd6, %rd1;
	add.s64 	%rd6, %rd6, %rd3;
	st.global.u32 	[%rd6], %r4;
	ret;
}
"#;

#[test]
fn the_race_check_finds_a_missing_barrier_that_the_schedule_hides() {
    let m = module(NEIGHBOUR);
    let k = m.kernel("k").unwrap();
    let mut mem = Memory::new();
    let out = mem.alloc(64 * 4).unwrap();
    let p = out.to_le_bytes();
    let race = Checks { race: true };
    launch(&k, dims(1, 64), &[&p, &0u32.to_le_bytes()], &mut mem, race).expect("with barrier");
    let mut got = vec![0u8; 256];
    mem.read(out, &mut got).unwrap();
    let got: Vec<u32> = got
        .chunks(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let want: Vec<u32> = (0..64).map(|i| (i + 1) % 64).collect();
    assert_eq!(got, want);
    // Without the barrier this schedule (warp 0, then warp 1) still gives warp 0's lane 31 a
    // zero from warp 1's slot: the race check names it instead of leaving a wrong value.
    launch(
        &k,
        dims(1, 64),
        &[&p, &1u32.to_le_bytes()],
        &mut mem,
        Checks::default(),
    )
    .expect("without the race check it runs");
    let err = launch(&k, dims(1, 64), &[&p, &1u32.to_le_bytes()], &mut mem, race)
        .unwrap_err()
        .to_string();
    assert!(err.contains("shared-memory race"), "{err}");
}
