//! The stand-in over a CUDA driver, as the emulated GPU test pass runs it: buffers are device
//! memory, reached only through the driver API of the `libcuda.so` found on `LD_LIBRARY_PATH`.
//! Each case runs this binary again as a child whose `LD_LIBRARY_PATH` starts with a folder
//! holding `libcuda.so`: a small fake driver built from `tests/fake_libcuda.c` (device addresses
//! that fault if dereferenced, copies refused without the owning context current; skipped
//! without a C compiler), and emu/cuda's `libconvoy_cuda_emu.so` once that is built with its
//! driver API (skipped before).

mod common;

use std::ffi::{c_int, c_void};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::ptr;

use common::*;
use convoy_nccl_emu::*;
use libloading::Library;

const CHILD: &str = "CONVOY_NCCL_EMU_DRIVER_CHILD";

type R = c_int;

/// The driver calls the child makes itself (the stand-in makes its own).
struct Cuda {
    lib: Library,
}

impl Cuda {
    fn open() -> Cuda {
        // SAFETY: the libcuda on LD_LIBRARY_PATH (the parent put it there).
        let lib = unsafe { Library::new("libcuda.so") }.expect("libcuda.so on LD_LIBRARY_PATH");
        Cuda { lib }
    }

    fn f<T: Copy>(&self, name: &str) -> T {
        // SAFETY: each name is used below with its documented signature.
        *unsafe { self.lib.get::<T>(name.as_bytes()) }.unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    fn ok(&self, what: &str, r: R) {
        assert_eq!(r, 0, "{what} failed with CUDA error {r}");
    }

    fn init(&self) -> c_int {
        let init: unsafe extern "C" fn(u32) -> R = self.f("cuInit");
        let count: unsafe extern "C" fn(*mut c_int) -> R = self.f("cuDeviceGetCount");
        let mut n = 0;
        // SAFETY: flags 0; a live local.
        unsafe {
            self.ok("cuInit", init(0));
            self.ok("cuDeviceGetCount", count(&mut n));
        }
        assert!(n > 0, "no devices");
        n
    }

    /// Makes device `ordinal`'s primary context current on this thread.
    fn bind(&self, ordinal: c_int) {
        let get: unsafe extern "C" fn(*mut c_int, c_int) -> R = self.f("cuDeviceGet");
        let retain: unsafe extern "C" fn(*mut *mut c_void, c_int) -> R =
            self.f("cuDevicePrimaryCtxRetain");
        let set: unsafe extern "C" fn(*mut c_void) -> R = self.f("cuCtxSetCurrent");
        let (mut dev, mut ctx) = (0, ptr::null_mut());
        // SAFETY: live locals; the context is retained for the rest of the process.
        unsafe {
            self.ok("cuDeviceGet", get(&mut dev, ordinal));
            self.ok("cuDevicePrimaryCtxRetain", retain(&mut ctx, dev));
            self.ok("cuCtxSetCurrent", set(ctx));
        }
    }

    fn upload(&self, bytes: &[u8]) -> u64 {
        let alloc: unsafe extern "C" fn(*mut u64, usize) -> R = self.f("cuMemAlloc_v2");
        let htod: unsafe extern "C" fn(u64, *const c_void, usize) -> R = self.f("cuMemcpyHtoD_v2");
        let mut p = 0;
        // SAFETY: a live local; `bytes` is readable for its length.
        unsafe {
            self.ok("cuMemAlloc_v2", alloc(&mut p, bytes.len()));
            self.ok(
                "cuMemcpyHtoD_v2",
                htod(p, bytes.as_ptr().cast(), bytes.len()),
            );
        }
        p
    }

    fn download(&self, p: u64, len: usize) -> Vec<u8> {
        let dtoh: unsafe extern "C" fn(*mut c_void, u64, usize) -> R = self.f("cuMemcpyDtoH_v2");
        let mut out = vec![0u8; len];
        // SAFETY: `out` is writable for `len` bytes; `p` is an allocation of at least `len`.
        unsafe { self.ok("cuMemcpyDtoH_v2", dtoh(out.as_mut_ptr().cast(), p, len)) };
        out
    }

    fn free(&self, p: u64) {
        let free: unsafe extern "C" fn(u64) -> R = self.f("cuMemFree_v2");
        // SAFETY: an allocation of ours, freed once.
        unsafe { self.ok("cuMemFree_v2", free(p)) };
    }
}

fn dev(p: u64) -> *mut c_void {
    ptr::without_provenance_mut(p as usize)
}

/// Not a test of its own: the child's body when `CHILD` is set (to the driver's name).
#[test]
fn driver_child() {
    let Ok(kind) = std::env::var(CHILD) else {
        return;
    };
    let cuda = Cuda::open();
    let devices = cuda.init();
    const N: usize = 1000;
    let id = unique_id();
    ranks(2, |r| {
        cuda.bind(r as c_int % devices);
        let grads: Vec<f32> = (0..N).map(|i| ((r + 1) * (i % 97)) as f32 * 0.25).collect();
        let g = cuda.upload(&f32s(&grads));
        let scalars = cuda.upload(
            &[r as f64 + 1.0, 10.0]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>(),
        );
        let sums = cuda.upload(&[0u8; 16]);
        let gathered = cuda.upload(&[0u8; 8]);
        let mine = cuda.upload(&(r as i32 * 7).to_le_bytes());

        let comm = init_nonblocking(2, id, r);
        assert_eq!(settle(comm), NcclResult::Success, "rank {r}: setup");
        let mut dev_no = -1;
        // SAFETY: a live handle and local.
        unsafe { ncclCommCuDevice(comm.raw(), &mut dev_no) };
        assert_eq!(dev_no, r as c_int % devices);

        // The reducer's pattern: a group of in-place averages over spans of one buffer.
        assert_eq!(ncclGroupStart(), NcclResult::Success);
        for (start, len) in [(0usize, 600usize), (600, 400)] {
            let p = dev(g + (start * 4) as u64);
            // SAFETY: spans of a live device allocation, until the settle below.
            let res = unsafe {
                ncclAllReduce(
                    p,
                    p,
                    len,
                    DataType::Float32 as u32,
                    RedOp::Avg as u32,
                    comm.raw(),
                    ptr::null_mut(),
                )
            };
            assert_eq!(res, NcclResult::Success);
        }
        let end = ncclGroupEnd();
        assert!(matches!(end, NcclResult::InProgress | NcclResult::Success));
        assert_eq!(settle(comm), NcclResult::Success, "rank {r}: averages");

        // SAFETY: live device allocations of 2 f64s, 2 f64s, 1 i32 and 2 i32s.
        unsafe {
            ncclAllReduce(
                dev(scalars),
                dev(sums),
                2,
                DataType::Float64 as u32,
                RedOp::Sum as u32,
                comm.raw(),
                ptr::null_mut(),
            );
            assert_eq!(settle(comm), NcclResult::Success, "rank {r}: sums");
            ncclAllGather(
                dev(mine),
                dev(gathered),
                1,
                DataType::Int32 as u32,
                comm.raw(),
                ptr::null_mut(),
            );
            assert_eq!(settle(comm), NcclResult::Success, "rank {r}: gather");
        }

        let want: Vec<f32> = grads.iter().map(|x| x / (r + 1) as f32 * 1.5).collect();
        assert_eq!(
            to_f32s(&cuda.download(g, N * 4)),
            want,
            "rank {r}: averages"
        );
        let summed: Vec<f64> = cuda
            .download(sums, 16)
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert_eq!(summed, [3.0, 20.0], "rank {r}: sums");
        assert_eq!(
            cuda.download(gathered, 8),
            [0, 0, 0, 0, 7, 0, 0, 0],
            "rank {r}"
        );

        // A host pointer where a device one belongs: the driver refuses the copy, this rank
        // fails with a CUDA error, and the other hears of it.
        let host = [0u8; 8];
        let send: *const c_void = if r == 1 {
            host.as_ptr().cast()
        } else {
            dev(mine)
        };
        // SAFETY: a live device allocation, or (rank 1) a host buffer the driver refuses.
        unsafe {
            ncclAllReduce(
                send,
                dev(mine),
                1,
                DataType::Int32 as u32,
                RedOp::Sum as u32,
                comm.raw(),
                ptr::null_mut(),
            )
        };
        assert_eq!(settle(comm), NcclResult::UnhandledCudaError, "rank {r}");
        let text = last_error(comm);
        assert!(
            text.contains("cuMemcpyDtoH_v2") && (r == 1 || text.contains("rank 1: ")),
            "rank {r}: {text}"
        );
        abort(comm);
        for p in [g, scalars, sums, gathered, mine] {
            cuda.free(p);
        }
    });
    if kind == "fake" {
        let syncs: unsafe extern "C" fn() -> std::ffi::c_long = cuda.f("fake_stream_syncs");
        // SAFETY: the fake's own counter, no arguments.
        let count = unsafe { syncs() };
        assert!(count > 0, "the stand-in never synchronized a stream");
    }
    eprintln!("driver child ({kind}): all checks passed");
}

/// Runs `driver_child` with `lib` as `libcuda.so` (and `.so.1`).
fn run_child(lib: &Path, kind: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    for name in ["libcuda.so", "libcuda.so.1"] {
        std::os::unix::fs::symlink(lib, dir.path().join(name)).expect("link libcuda");
    }
    let mut path = dir.path().as_os_str().to_owned();
    if let Some(old) = std::env::var_os("LD_LIBRARY_PATH") {
        path.push(":");
        path.push(old);
    }
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "driver_child", "--nocapture", "--test-threads=1"])
        .env(CHILD, kind)
        .env("LD_LIBRARY_PATH", path)
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.contains("all checks passed"),
        "the child over the {kind} driver failed ({}):\n{stderr}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    eprintln!("ran over the {kind} driver ({})", lib.display());
}

#[test]
fn over_a_fake_driver() {
    let dir = tempfile::tempdir().expect("temp dir");
    let lib = dir.path().join("libfakecuda.so");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fake_libcuda.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let built = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-lpthread")
        .status();
    match built {
        Ok(s) if s.success() => run_child(&lib, "fake"),
        Ok(s) => panic!("{cc} could not build {}: {s}", src.display()),
        Err(e) => eprintln!("over_a_fake_driver: skipped ({cc}: {e})"),
    }
}

/// `target/<profile>/`, where cargo puts the workspace's shared libraries.
fn target_profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    // target/<profile>/deps/<this test>
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

#[test]
fn over_the_emulated_driver() {
    let lib = target_profile_dir().join("libconvoy_cuda_emu.so");
    if !lib.exists() {
        eprintln!(
            "over_the_emulated_driver: skipped ({} not built: cargo build -p convoy-cuda-emu)",
            lib.display()
        );
        return;
    }
    let needed = [
        "cuInit",
        "cuDeviceGetCount",
        "cuDeviceGet",
        "cuDevicePrimaryCtxRetain",
        "cuCtxSetCurrent",
        "cuCtxGetCurrent",
        "cuCtxGetDevice",
        "cuMemAlloc_v2",
        "cuMemFree_v2",
        "cuMemcpyHtoD_v2",
        "cuMemcpyDtoH_v2",
        "cuStreamSynchronize",
    ];
    let missing: Vec<&str> = {
        // SAFETY: only looked up, never called, in this process.
        let probe = unsafe { Library::new(&lib) }.expect("load the emulated driver");
        needed
            .iter()
            .copied()
            // SAFETY: as above.
            .filter(|s| unsafe { probe.get::<*const c_void>(s.as_bytes()) }.is_err())
            .collect()
    };
    if !missing.is_empty() {
        eprintln!("over_the_emulated_driver: skipped (its driver API lacks {missing:?} so far)");
        return;
    }
    run_child(&lib, "emu");
}
