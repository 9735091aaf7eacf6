//! cuBLASLt, NVIDIA's GEMM library, through cudarc's raw bindings: the vendor's products as a
//! switch beside convoy's own (a spec's `[kernels] gemm = "cublaslt"`), so the same model and
//! the GEMM benchmark can compare the two with the same arithmetic — fp32 or bf16 operands, fp32
//! accumulation (no TF32), an fp32 output or, from bf16 operands, a bf16 one, optional fp32
//! bias, overwrite or accumulate.
//!
//! cudarc's safe `Matmul` uses one element type for A, B and C and TF32 for fp32, so this file
//! sets up the descriptors itself. A plan (descriptor, layouts, the heuristic's algorithm) is
//! made once per shape and alignment and reused: a training step asks for the same few
//! shapes every time.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::ffi::{c_int, c_void};
use std::mem::size_of;
use std::sync::Mutex;

use cudarc::cublaslt::{result, sys};
use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, DevicePtr, DevicePtrMut};

use super::gemm::{Gemm, Operand, check_output};
use crate::cuda::{CudaError, Device};

/// cuBLASLt's workspace: NVIDIA's recommendation for Hopper (32 MiB), enough for Ampere.
const WORKSPACE_BYTES: usize = 32 << 20;

/// What a plan depends on: the product's shape, the operand and output types, the epilogue,
/// and the pointers' alignments (cuBLASLt picks algorithms for the alignment it is promised).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
struct Key {
    ta: bool,
    tb: bool,
    dims: [usize; 6],
    operand: i32,
    output: i32,
    bias: bool,
    align: [u32; 3],
}

/// The cuBLASLt objects of one product; destroyed with it.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    a: sys::cublasLtMatrixLayout_t,
    b: sys::cublasLtMatrixLayout_t,
    c: sys::cublasLtMatrixLayout_t,
    pref: sys::cublasLtMatmulPreference_t,
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each handle was created by this plan and is destroyed once, here; a failure
        // to destroy leaks it, nothing more.
        unsafe {
            let _ = result::destroy_matmul_pref(self.pref);
            let _ = result::destroy_matrix_layout(self.c);
            let _ = result::destroy_matrix_layout(self.b);
            let _ = result::destroy_matrix_layout(self.a);
            let _ = result::destroy_matmul_desc(self.desc);
        }
    }
}

/// A cuBLASLt handle with its workspace and plans, for one device.
pub struct CublasLt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<Key, Plan>>,
}

// SAFETY: a cuBLASLt handle and its descriptors are plain heap objects that any thread may use,
// one at a time; the plans are behind a mutex and `gemm` takes `&self` only to enqueue work on
// the caller's stream. Nothing here is tied to the creating thread.
unsafe impl Send for CublasLt {}

fn lt_error(during: &str, e: impl std::fmt::Debug) -> CudaError {
    CudaError::Driver {
        during: format!("cuBLASLt {during}"),
        msg: format!("{e:?}"),
    }
}

impl CublasLt {
    /// A handle for `dev`, or an error naming the library when libcublasLt cannot be loaded.
    pub fn new(dev: &Device) -> Result<CublasLt, CudaError> {
        // SAFETY: only tries to dlopen libcublasLt; no cuBLASLt function is called.
        if !unsafe { sys::is_culib_present() } {
            return Err(CudaError::Driver {
                during: "loading cuBLASLt".into(),
                msg: "libcublasLt.so.12 not found through LD_LIBRARY_PATH (the CUDA toolkit or \
                      the nvidia-cublas-cu12 wheel has it)"
                    .into(),
            });
        }
        let handle = result::create_handle().map_err(|e| lt_error("creating a handle", e))?;
        let workspace = dev
            .stream
            .alloc_zeros::<u8>(WORKSPACE_BYTES)
            .map_err(|e| lt_error("allocating the workspace", e))?;
        Ok(CublasLt {
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
        })
    }

    /// `c [m, n] = op(a)·op(b) (+ bias [n]) (+ c if g.accumulate)` for the row-major,
    /// unbatched product `g` (alpha 1), on the device's stream.
    pub fn gemm<T: Operand, O: Operand>(
        &self,
        dev: &Device,
        g: &Gemm,
        c: &mut CudaViewMut<'_, O>,
        a: &CudaView<'_, T>,
        b: &CudaView<'_, T>,
        bias: Option<&CudaView<'_, f32>>,
    ) -> Result<(), CudaError> {
        const OP: &str = "cublaslt gemm";
        assert!(
            g.outer == 1 && g.inner == 1 && g.alpha == 1.0,
            "{OP}: unbatched products with alpha 1 only"
        );
        check_output::<T, O>(OP);
        assert!(
            !(g.accumulate && bias.is_some()),
            "{OP}: a bias with accumulate"
        );
        g.check(OP, a.len(), b.len(), c.len(), bias.map(|x| x.len()));
        let s = &dev.stream;
        let (pa, _ra) = a.device_ptr(s);
        let (pb, _rb) = b.device_ptr(s);
        let (pc, _rc) = c.device_ptr_mut(s);
        let bias_ptr = bias.map(|x| x.device_ptr(s));
        let (pw, _rw) = self.workspace.device_ptr(s);
        // The largest power of two (up to 256) dividing each address: what cuBLASLt may assume.
        let align = |p: u64| 1u32 << p.trailing_zeros().min(8);
        let key = Key {
            ta: g.ta,
            tb: g.tb,
            dims: [g.m, g.n, g.k, g.lda, g.ldb, g.ldc],
            operand: T::LT_TYPE as i32,
            output: O::LT_TYPE as i32,
            bias: bias.is_some(),
            align: [align(pa), align(pb), align(pc)],
        };
        let mut plans = self.plans.lock().unwrap_or_else(|e| e.into_inner());
        let plan = match plans.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => e.insert(self.plan::<T, O>(&key)?),
        };
        if let Some((p, _)) = &bias_ptr {
            // SAFETY: the attribute is a device pointer, passed by address with its size; the
            // bias view holds N floats (checked above) and outlives the enqueued product.
            unsafe {
                result::set_matmul_desc_attribute(
                    plan.desc,
                    sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                    (p as *const u64).cast::<c_void>(),
                    size_of::<u64>(),
                )
            }
            .map_err(|e| lt_error("setting the bias", e))?;
        }
        let (alpha, beta) = (1.0f32, if g.accumulate { 1.0f32 } else { 0.0 });
        // SAFETY: the plan's layouts describe exactly the extents checked above (column-major:
        // cuBLASLt's A is our B, its B our A, its C our C transposed), the pointers come from
        // views that stay borrowed until this call has enqueued the product on the stream (which
        // is all that uses them), alpha and beta are f32 as the plan's scale type says, and the
        // workspace is the handle's own of WORKSPACE_BYTES, the size its preference allows.
        unsafe {
            result::matmul(
                self.handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                pb as *const c_void,
                plan.a,
                pa as *const c_void,
                plan.b,
                pc as *const c_void,
                plan.c,
                pc as *mut c_void,
                plan.c,
                &plan.algo,
                pw as *mut c_void,
                WORKSPACE_BYTES,
                s.cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(|e| lt_error(&format!("product {:?}", key.dims), e))
    }

    /// The descriptors of a product and the heuristic's fastest algorithm for it.
    fn plan<T: Operand, O: Operand>(&self, key: &Key) -> Result<Plan, CudaError> {
        let [m, n, k, lda, ldb, ldc] = key.dims.map(|x| x as u64);
        let (lda, ldb, ldc) = (lda as i64, ldb as i64, ldc as i64);
        let err = |what: &'static str| move |e| lt_error(what, e);
        let desc = result::create_matmul_desc(
            sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            sys::cudaDataType::CUDA_R_32F,
        )
        .map_err(err("creating a descriptor"))?;
        // Row-major C = op(A)·op(B) is column-major Cᵀ = op(B)ᵀ·op(A)ᵀ: cuBLASLt's A is our B
        // (transposed when ours is), its B our A. A row-major [r, c] buffer with leading
        // dimension ld is a column-major [c, r] one with the same ld.
        let layout = |ty, rows, cols, ld| {
            result::create_matrix_layout(ty, rows, cols, ld).map_err(err("creating a layout"))
        };
        let (a_rows, a_cols) = if key.tb { (k, n) } else { (n, k) };
        let (b_rows, b_cols) = if key.ta { (m, k) } else { (k, m) };
        let mut plan = Plan {
            desc,
            a: layout(T::LT_TYPE, a_rows, a_cols, ldb)?,
            b: layout(T::LT_TYPE, b_rows, b_cols, lda)?,
            c: layout(O::LT_TYPE, n, m, ldc)?,
            pref: result::create_matmul_pref().map_err(err("creating a preference"))?,
            // SAFETY: an all-zero algorithm is a valid value of this plain C struct; the
            // heuristic overwrites it below.
            algo: unsafe { std::mem::zeroed() },
        };
        let epilogue = if key.bias {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
        } else {
            sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT
        };
        let (trans_a, trans_b) = (c_int::from(key.tb), c_int::from(key.ta));
        // The bias is fp32 whatever the output (by default cuBLASLt would take D's type).
        let bias_type = sys::cudaDataType::CUDA_R_32F;
        let workspace = WORKSPACE_BYTES as u64;
        // SAFETY: every attribute is passed by the address of a live local of the type the
        // attribute has (int32 transposes, a uint32 epilogue, a cudaDataType bias type, a
        // uint64 workspace size, uint32 alignments) with that type's size; the handles were
        // just created.
        unsafe {
            use sys::cublasLtMatmulDescAttributes_t as D;
            use sys::cublasLtMatmulPreferenceAttributes_t as P;
            let set_desc = |attr, value: *const c_void, size| {
                result::set_matmul_desc_attribute(plan.desc, attr, value, size)
                    .map_err(err("setting a descriptor attribute"))
            };
            set_desc(
                D::CUBLASLT_MATMUL_DESC_TRANSA,
                (&trans_a as *const c_int).cast(),
                size_of::<c_int>(),
            )?;
            set_desc(
                D::CUBLASLT_MATMUL_DESC_TRANSB,
                (&trans_b as *const c_int).cast(),
                size_of::<c_int>(),
            )?;
            set_desc(
                D::CUBLASLT_MATMUL_DESC_EPILOGUE,
                (&epilogue as *const sys::cublasLtEpilogue_t).cast(),
                size_of::<sys::cublasLtEpilogue_t>(),
            )?;
            set_desc(
                D::CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE,
                (&bias_type as *const sys::cudaDataType).cast(),
                size_of::<sys::cudaDataType>(),
            )?;
            let set_pref = |attr, value: *const c_void, size| {
                result::set_matmul_pref_attribute(plan.pref, attr, value, size)
                    .map_err(err("setting a preference"))
            };
            set_pref(
                P::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace as *const u64).cast(),
                size_of::<u64>(),
            )?;
            // cuBLASLt's A is our B, its B our A; C and D are the same buffer.
            let [align_a, align_b, align_c] = key.align;
            for (attr, value) in [
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_b),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_a),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_c),
                (P::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_c),
            ] {
                set_pref(attr, (&value as *const u32).cast(), size_of::<u32>())?;
            }
            let heuristic = result::get_matmul_algo_heuristic(
                self.handle,
                plan.desc,
                plan.a,
                plan.b,
                plan.c,
                plan.c,
                plan.pref,
            )
            .map_err(err("finding an algorithm"))?;
            plan.algo = heuristic.algo;
        }
        Ok(plan)
    }
}

impl Drop for CublasLt {
    fn drop(&mut self) {
        self.plans.lock().unwrap_or_else(|e| e.into_inner()).clear();
        // SAFETY: the handle was created in `new` and is destroyed once, after its plans.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}
