// Hand-written GEMMs: fp32 on the CUDA cores (shared-memory tiles, 8×8 register micro-tiles)
// and bf16 on the tensor cores (inline-PTX mma.sync.m16n8k16, fp32 accumulate), plus the
// fp32 ⇄ bf16 conversions.
//
// Notation. op(A) is [M, K], op(B) is [K, N], C is [M, N]. Every matrix is row-major with a
// leading dimension (elements from one row to the next); the suffix of a generic kernel says
// which operands are stored transposed:
//   A "n": A(m, k) = A[m·lda + k]   (A stored [M, lda ≥ K])
//   A "t": A(m, k) = A[k·lda + m]   (A stored [K, lda ≥ M])
//   B "n": B(k, n) = B[k·ldb + n]   (B stored [K, ldb ≥ N])
//   B "t": B(k, n) = B[n·ldb + k]   (B stored [N, ldb ≥ K])
//   C(m, n) = C[m·ldc + n]
// The generic kernels compute, for every batch z = blockIdx.z,
//   C_z = alpha·op(A_z)·op(B_z) + bias (if not null) + C_z (if accumulate)
// (C is overwritten, never read, when accumulate is 0; C must not overlap A, B or bias, which
// may overlap each other). Batch z = zo·batch_inner + zi starts at X + zo·sx_outer +
// zi·sx_inner for X = A, B, C (parameters sa_*, sb_*, sc_*): two levels of strides, so that
// attention's heads are read and written in place in convoy's [B, T, 3C] layout; a plain
// strided batch is batch_inner = 1 with the strides in sx_outer.
//
// kernel                    computes                          shapes (M, N, K of the product)
// matmul_forward            out = inp·weightᵀ (+ bias)        out [N, OC], inp [N, C],
//                                                             weight [OC, C], bias [OC] or null
//                                                             (M = N, N = OC, K = C)
// matmul_backward_dinp      dinp += dout·weight               dinp [N, C], dout [N, OC],
//                                                             weight [OC, C] (M = N, N = C, K = OC)
// matmul_backward_dweight   dweight += doutᵀ·inp              dweight [OC, C], dout [N, OC],
//                                                             inp [N, C] (M = OC, N = C, K = N)
// matmul_backward_dbias     dbias += Σ_rows dout              dbias [OC], dout [N, OC]
// gemm_f32_{nn,nt,tn,tt}    generic batched fp32 (above)      A, B, C fp32
// gemm_bf16_{nn,nt,tn,tt}   generic batched, tensor cores     A, B bf16; C, bias fp32
// gemm_bf16_*_bf16out       the same with a bf16 C            A, B, C bf16; bias fp32
// f32_to_bf16, bf16_to_f32  elementwise conversion            [n] → [n]
//
// Attention in convoy's layout (attention.rs): qkv [B, T, 3C], NH heads of hs = C/NH channels,
// batch z = b·NH + h, so batch_inner = NH; q, k, v of head h start at qkv + {0, C, 2C} + h·hs
// with ld 3C and strides (T·3C, hs); [B, NH, T, T] buffers have ld T, strides (NH·T·T, T·T);
// [B, T, C] buffers (out, dout) have ld C, strides (T·C, hs).
//   preatt  = scale·q·kᵀ       gemm_f32_nt  M = T, N = T,  K = hs  A = q, B = k, C = preatt
//   out     = att·v            gemm_f32_nn  M = T, N = hs, K = T   A = att, B = v, C = out
//   datt    = dout·vᵀ          gemm_f32_nt  M = T, N = T,  K = hs  A = dout, B = v, C = datt
//   dq     += scale·dpre·k     gemm_f32_nn  M = T, N = hs, K = T   A = dpreatt, B = k, C = dq
//   dk     += scale·dpreᵀ·q    gemm_f32_tn  M = T, N = hs, K = T   A = dpreatt, B = q, C = dk
//   dv     += attᵀ·dout        gemm_f32_tn  M = T, N = hs, K = T   A = att, B = dout, C = dv
// (the products compute the masked upper triangles too, like the CPU reference).
//
// Launch configurations (host code must use exactly these):
//   fp32 GEMMs (matmul_forward, matmul_backward_dinp, matmul_backward_dweight, gemm_f32_*):
//     block (256, 1, 1); grid (ceil(N/128), ceil(M/128), batch) with M, N of the product
//     (matmul_forward: (ceil(OC/128), ceil(N/128), 1); dinp: (ceil(C/128), ceil(N/128), 1);
//     dweight: (ceil(C/128), ceil(OC/128), 1)); no dynamic shared memory (16.5 KiB static).
//   bf16 GEMMs (gemm_bf16_*): block (256, 1, 1); grid (ceil(N/128), ceil(M/128), batch); no
//     dynamic shared memory (40 KiB static). Needs sm_80 or newer.
//   matmul_backward_dbias: block (32, 32, 1); grid (ceil(OC/32), 1, 1).
//   f32_to_bf16, bf16_to_f32: one thread per element, any 1-D block.
// M, N and batch must be > 0 (a zero-sized grid is a launch error); K may be 0 (C = bias +
// accumulated C). grid.y ≤ 65535 limits M to 8 388 480 rows, grid.z ≤ 65535 the batch.
//
// Determinism: every output element is computed by one thread, summing over K in increasing
// order in fixed-size chunks; dbias sums rows in a fixed partition (32 strided row slices, then
// the 32 partial sums in order). No atomics: results are identical run to run on one GPU.
// Index arithmetic: dimensions are int; every row·ld product and batch offset is 64-bit.

// ---------------------------------------------------------------------------------------------
// fp32 tiled GEMM
// ---------------------------------------------------------------------------------------------

#define SG_BM 128       // block tile rows (M)
#define SG_BN 128       // block tile columns (N)
#define SG_BK 8         // K per shared-memory stage
#define SG_THREADS 256  // (SG_BM / 8) × (SG_BN / 8) threads, 8×8 outputs each
#define SG_PAD 4        // keeps the transposing stores conflict-free and float4 rows aligned

static_assert(SG_BM == SG_BN, "one shared tile shape serves A and B");
static_assert(SG_BM * SG_BK == 4 * SG_THREADS, "one float4 chunk per thread, operand and stage");
static_assert(SG_BM != SG_BK, "a stage tile's orientation is known from its shape");

// A thread's float4 chunk of one operand's stage tiles, in global memory (row-major g, leading
// dimension ld). A stage tile is SG_BK rows (k) × SG_BM contiguous columns (m or n) when
// K_ROWS ("t" A, "n" B), otherwise SG_BM rows (m or n) × SG_BK contiguous columns (k); chunk
// tid is row tid / (W / 4), columns tid % (W / 4) · 4 .. +3 of the tile, W its width. The
// pointer and the bounds of the m (n) dimension are worked out once; a stage only moves the
// pointer and the k index on. Fewer registers live through the main loop than with indices
// recomputed per stage: the fp32 GEMMs fit in 128 registers (two blocks per SM) without spills
// (kernels/tests/ptxas.rs checks it with ptxas 12.4).
template <bool K_ROWS>
struct SgChunk {
    enum : int { W = K_ROWS ? SG_BM : SG_BK };  // tile width (contiguous columns)
    const float* p;  // the chunk in the current stage; read only where in bounds
    int k;           // the chunk's k in the current stage: its row (K_ROWS) or first column
    int live;        // K_ROWS: how many of its 4 columns are < mnmax; else 4 (row < mnmax) or 0
    bool vec;        // g is 16-byte aligned and ld % 4 == 0: a whole in-bounds chunk is a float4

    // The first stage (k from 0) of the tile whose m (n) dimension starts at mn0, in bounds
    // below mnmax (M or N).
    __device__ __forceinline__ SgChunk(const float* g, int ld, int mn0, int mnmax) {
        const int r = threadIdx.x / (W / 4), col = threadIdx.x % (W / 4) * 4;
        if (K_ROWS) {
            p = g + (long long)r * ld + (mn0 + col);
            k = r;
            live = min(max(mnmax - (mn0 + col), 0), 4);
        } else {
            p = g + (long long)(mn0 + r) * ld + col;
            k = col;
            live = mn0 + r < mnmax ? 4 : 0;
        }
        vec = (reinterpret_cast<unsigned long long>(g) & 15) == 0 && ld % 4 == 0;
    }

    // The chunk of the current stage, zero outside the matrix (k < K, m < M or n < N).
    __device__ __forceinline__ float4 load(int K) const {
        // How many of the chunk's columns are in bounds: they are consecutive, from the first.
        const int n = K_ROWS ? (k < K ? live : 0) : (live == 0 ? 0 : min(max(K - k, 0), 4));
        float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
        if (vec && n == 4) {
            v = __ldg(reinterpret_cast<const float4*>(p));
        } else {
            if (n > 0) v.x = __ldg(p);
            if (n > 1) v.y = __ldg(p + 1);
            if (n > 2) v.z = __ldg(p + 2);
            if (n > 3) v.w = __ldg(p + 3);
        }
        return v;
    }

    // On to the next stage: SG_BK rows down (K_ROWS) or SG_BK columns right.
    __device__ __forceinline__ void next(int ld) {
        p += K_ROWS ? (long long)SG_BK * ld : SG_BK;
        k += SG_BK;
    }

    // Stores the chunk v into the k-major shared tile s[SG_BK][SG_BM + SG_PAD] (s[k][m] for A,
    // s[k][n] for B): 4 consecutive m (n) of one k when K_ROWS; otherwise the chunk is 4
    // consecutive k of one m (n) and spreads over 4 rows of s.
    __device__ __forceinline__ static void store(float (*s)[SG_BM + SG_PAD], float4 v) {
        const int r = threadIdx.x / (W / 4), col = threadIdx.x % (W / 4) * 4;
        if (K_ROWS) {
            *reinterpret_cast<float4*>(&s[r][col]) = v;
        } else {
            s[col][r] = v.x;
            s[col + 1][r] = v.y;
            s[col + 2][r] = v.z;
            s[col + 3][r] = v.w;
        }
    }
};

// blockIdx.z, read anew at each call: the compiler cannot reuse an earlier read (or what was
// computed from it), so the batch offset of C is worked out after the main loop rather than
// kept in registers through it.
__device__ __forceinline__ unsigned block_z_now() {
    unsigned z;
    asm volatile("mov.u32 %0, %%ctaid.z;" : "=r"(z));
    return z;
}

// One 128×128 block of C = alpha·op(A)·op(B) (+ bias) (+ C). A, B already point at this batch;
// c_at() returns C for it, called once after the main loop. Thread (ty, tx) of the 16×16 grid
// owns rows {ty·4 .. ty·4+3, 64+ty·4 .. 64+ty·4+3} and the same columns with tx: two float4
// reads per operand and k from shared memory, without bank conflicts. Shared memory is
// double-buffered, the next stage prefetched into registers while the current one is
// multiplied: one __syncthreads per stage.
template <bool TA, bool TB, typename CAt>
__device__ __forceinline__ void sgemm_block(CAt c_at, const float* __restrict__ A,
                                            const float* __restrict__ B,
                                            const float* __restrict__ bias, int M, int N, int K,
                                            int lda, int ldb, int ldc, float alpha,
                                            bool accumulate) {
    __shared__ __align__(16) float As[2][SG_BK][SG_BM + SG_PAD];
    __shared__ __align__(16) float Bs[2][SG_BK][SG_BN + SG_PAD];
    const int m0 = blockIdx.y * SG_BM, n0 = blockIdx.x * SG_BN;
    const int tid = threadIdx.x;
    const int tx = tid % (SG_BN / 8), ty = tid / (SG_BN / 8);

    // Rows k: "t" A (A(m, k) = A[k·lda + m]) and "n" B; rows m or n: "n" A and "t" B.
    SgChunk<TA> ca(A, lda, m0, M);
    SgChunk<!TB> cb(B, ldb, n0, N);
    float4 ra, rb;  // the stage in flight from global to shared memory
    auto stage = [&](int buf) {
        SgChunk<TA>::store(As[buf], ra);
        SgChunk<!TB>::store(Bs[buf], rb);
    };

    float acc[8][8];
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
        for (int j = 0; j < 8; ++j) acc[i][j] = 0.0f;

    if (K > 0) {
        ra = ca.load(K);
        rb = cb.load(K);
        stage(0);
    }
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < K; k0 += SG_BK) {
        const bool more = k0 + SG_BK < K;
        if (more) {
            ca.next(lda);
            cb.next(ldb);
            ra = ca.load(K);
            rb = cb.load(K);
        }
#pragma unroll
        for (int kk = 0; kk < SG_BK; ++kk) {
            const float4 a0 = *reinterpret_cast<const float4*>(&As[buf][kk][ty * 4]);
            const float4 a1 = *reinterpret_cast<const float4*>(&As[buf][kk][SG_BM / 2 + ty * 4]);
            const float4 b0 = *reinterpret_cast<const float4*>(&Bs[buf][kk][tx * 4]);
            const float4 b1 = *reinterpret_cast<const float4*>(&Bs[buf][kk][SG_BN / 2 + tx * 4]);
            const float a[8] = {a0.x, a0.y, a0.z, a0.w, a1.x, a1.y, a1.z, a1.w};
            const float b[8] = {b0.x, b0.y, b0.z, b0.w, b1.x, b1.y, b1.z, b1.w};
#pragma unroll
            for (int i = 0; i < 8; ++i)
#pragma unroll
                for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        // Buffer buf ^ 1 was last read in the previous stage, which every thread has left.
        if (more) stage(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }

    float* __restrict__ const C = c_at();
#pragma unroll
    for (int i = 0; i < 8; ++i) {
        const int m = m0 + (i < 4 ? ty * 4 + i : SG_BM / 2 + ty * 4 + i - 4);
        if (m >= M) continue;
        float* crow = C + (long long)m * ldc;
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const int n = n0 + (j < 4 ? tx * 4 + j : SG_BN / 2 + tx * 4 + j - 4);
            if (n >= N) continue;
            float v = alpha * acc[i][j];
            if (bias != nullptr) v += bias[n];
            if (accumulate) v += crow[n];
            crow[n] = v;
        }
    }
}

// out = inp·weightᵀ (+ bias): C = out, A = inp ("n", lda C), B(k, n) = weight[n·C + k] ("t").
extern "C" __global__ void __launch_bounds__(SG_THREADS, 2) matmul_forward(
    float* __restrict__ out,           // [N, OC]
    const float* __restrict__ inp,     // [N, C]
    const float* __restrict__ weight,  // [OC, C]
    const float* __restrict__ bias,    // [OC], or null for no bias
    int n, int c, int oc) {
    sgemm_block<false, true>([&] { return out; }, inp, weight, bias, n, oc, c, c, c, oc, 1.0f,
                             false);
}

// dinp += dout·weight: A = dout ("n", lda OC), B(k, n) = weight[k·C + n] ("n", ldb C).
extern "C" __global__ void __launch_bounds__(SG_THREADS, 2) matmul_backward_dinp(
    float* __restrict__ dinp,          // [N, C]
    const float* __restrict__ dout,    // [N, OC]
    const float* __restrict__ weight,  // [OC, C]
    int n, int c, int oc) {
    sgemm_block<false, false>([&] { return dinp; }, dout, weight, nullptr, n, c, oc, oc, c, c,
                              1.0f, true);
}

// dweight += doutᵀ·inp: A(m, k) = dout[k·OC + m] ("t", lda OC), B = inp ("n", ldb C).
extern "C" __global__ void __launch_bounds__(SG_THREADS, 2) matmul_backward_dweight(
    float* __restrict__ dweight,     // [OC, C]
    const float* __restrict__ dout,  // [N, OC]
    const float* __restrict__ inp,   // [N, C]
    int n, int c, int oc) {
    sgemm_block<true, false>([&] { return dweight; }, dout, inp, nullptr, oc, c, n, oc, c, c,
                             1.0f, true);
}

#define DBIAS_COLS 32  // blockDim.x: one column per thread, a warp reads 32 consecutive floats
#define DBIAS_ROWS 32  // blockDim.y: row slices y, y + 32, y + 64, ... summed in parallel

// dbias += the column sums of dout. Thread (x, y) sums rows y, y + 32, ... of its column in
// order; thread (x, 0) then adds the 32 partial sums in order of y.
extern "C" __global__ void __launch_bounds__(DBIAS_COLS * DBIAS_ROWS) matmul_backward_dbias(
    float* __restrict__ dbias,       // [OC]
    const float* __restrict__ dout,  // [N, OC]
    int n, int oc) {
    __shared__ float part[DBIAS_ROWS][DBIAS_COLS + 1];
    const int col = blockIdx.x * DBIAS_COLS + threadIdx.x;
    float s = 0.0f;
    if (col < oc)
        for (long long r = threadIdx.y; r < n; r += DBIAS_ROWS) s += dout[r * oc + col];
    part[threadIdx.y][threadIdx.x] = s;
    __syncthreads();
    if (threadIdx.y == 0 && col < oc) {
        float t = 0.0f;
        for (int y = 0; y < DBIAS_ROWS; ++y) t += part[y][threadIdx.x];
        dbias[col] += t;
    }
}

// The generic batched fp32 GEMMs, one per transpose combination (see the table at the top).
#define GEMM_F32(NAME, TA, TB)                                                                  \
    extern "C" __global__ void __launch_bounds__(SG_THREADS, 2) NAME(                           \
        float* __restrict__ C,           /* [batch][M, ldc] at the strides below */            \
        const float* __restrict__ A,     /* op(A) [M, K]: [M, lda] ("n") or [K, lda] ("t") */  \
        const float* __restrict__ B,     /* op(B) [K, N]: [K, ldb] ("n") or [N, ldb] ("t") */  \
        const float* __restrict__ bias,  /* [N], or null */                                    \
        int M, int N, int K, int lda, int ldb, int ldc,                                        \
        long long sa_outer, long long sa_inner, long long sb_outer, long long sb_inner,        \
        long long sc_outer, long long sc_inner, int batch_inner, float alpha, int accumulate) { \
        const long long zo = blockIdx.z / batch_inner, zi = blockIdx.z % batch_inner;          \
        auto c_at = [&] {                                                                      \
            const unsigned z = block_z_now();                                                  \
            return C + (long long)(z / batch_inner) * sc_outer +                               \
                   (long long)(z % batch_inner) * sc_inner;                                    \
        };                                                                                     \
        sgemm_block<TA, TB>(c_at, A + zo * sa_outer + zi * sa_inner,                           \
                            B + zo * sb_outer + zi * sb_inner, bias, M, N, K, lda, ldb, ldc,   \
                            alpha, accumulate != 0);                                           \
    }

GEMM_F32(gemm_f32_nn, false, false)
GEMM_F32(gemm_f32_nt, false, true)
GEMM_F32(gemm_f32_tn, true, false)
GEMM_F32(gemm_f32_tt, true, true)

// ---------------------------------------------------------------------------------------------
// bf16 tensor-core GEMM
// ---------------------------------------------------------------------------------------------

#define HG_BM 128       // block tile rows (M)
#define HG_BN 128       // block tile columns (N)
#define HG_BK 32        // K per shared-memory stage (two k16 mma steps)
#define HG_THREADS 256  // 8 warps as 2 (M) × 4 (N), a 64×32 warp tile each
#define HG_PAD 8        // bf16 per padded row: conflict-free fragment loads, 16-byte rows
// Elements of one operand stage in shared memory: [128][32 + 8] or [32][128 + 8].
#define HG_TILE (HG_BM * (HG_BK + HG_PAD) > HG_BK * (HG_BM + HG_PAD) ? HG_BM * (HG_BK + HG_PAD) \
                                                                     : HG_BK * (HG_BM + HG_PAD))
#define HG_CHUNKS (HG_BM * HG_BK / 8 / HG_THREADS)  // 16-byte chunks per thread and operand

static_assert(HG_BM == HG_BN, "one shared tile shape serves A and B");
static_assert(HG_BM * HG_BK % (8 * HG_THREADS) == 0, "whole 16-byte chunks per thread");

// The tile rows r0.. (TR) × contiguous columns c0.. (TC) of a row-major bf16 matrix with
// leading dimension ld, as 16-byte chunks of 8 elements, zero (bf16 +0) outside rows < rmax,
// columns < cmax. `vec`: g is 16-byte aligned and ld a multiple of 8.
template <int TR, int TC>
__device__ __forceinline__ void hg_load(uint4 (&reg)[HG_CHUNKS],
                                        const unsigned short* __restrict__ g, long long ld,
                                        int r0, int c0, int rmax, int cmax, bool vec) {
    static_assert(TR * TC == HG_BM * HG_BK, "a stage tile");
#pragma unroll
    for (int i = 0; i < HG_CHUNKS; ++i) {
        const int c = threadIdx.x + i * HG_THREADS;
        const int r = r0 + c / (TC / 8), col = c0 + c % (TC / 8) * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r < rmax) {
            const unsigned short* p = g + (long long)r * ld + col;
            if (vec && col + 7 < cmax) {
                v = __ldg(reinterpret_cast<const uint4*>(p));
            } else {
                unsigned e[8];
#pragma unroll
                for (int t = 0; t < 8; ++t) e[t] = col + t < cmax ? __ldg(p + t) : 0u;
                v = make_uint4(e[0] | e[1] << 16, e[2] | e[3] << 16, e[4] | e[5] << 16,
                               e[6] | e[7] << 16);
            }
        }
        reg[i] = v;
    }
}

// Stores the chunks of hg_load<TR, TC> into s[TR][TC + HG_PAD], the orientation of global
// memory.
template <int TR, int TC>
__device__ __forceinline__ void hg_store(unsigned short* s, const uint4 (&reg)[HG_CHUNKS]) {
#pragma unroll
    for (int i = 0; i < HG_CHUNKS; ++i) {
        const int c = threadIdx.x + i * HG_THREADS;
        const int r = c / (TC / 8), col = c % (TC / 8) * 8;
        *reinterpret_cast<uint4*>(s + r * (TC + HG_PAD) + col) = reg[i];
    }
}

// One 128×128 block of C = alpha·op(A)·op(B) (+ bias) (+ C) with bf16 A, B (as raw 16-bit
// patterns) and fp32 accumulators; OutT = float or __nv_bfloat16. Shared tiles keep the
// orientation of global memory ([m][k] for "n" A, [k][m] for "t" A, [k][n] for "n" B, [n][k]
// for "t" B), double-buffered with a register prefetch of the next stage. Fragments along k
// (k-contiguous tiles) are single 32-bit loads; across k, two 16-bit loads.
template <bool TA, bool TB, typename OutT>
__device__ __forceinline__ void hgemm_block(OutT* __restrict__ C,
                                            const unsigned short* __restrict__ A,
                                            const unsigned short* __restrict__ B,
                                            const float* __restrict__ bias, int M, int N, int K,
                                            int lda, int ldb, int ldc, float alpha,
                                            bool accumulate) {
    __shared__ __align__(16) unsigned short As[2][HG_TILE];
    __shared__ __align__(16) unsigned short Bs[2][HG_TILE];
    constexpr int LDA_S = TA ? HG_BM + HG_PAD : HG_BK + HG_PAD;  // [k][m] or [m][k]
    constexpr int LDB_S = TB ? HG_BK + HG_PAD : HG_BN + HG_PAD;  // [n][k] or [k][n]
    const int m0 = blockIdx.y * HG_BM, n0 = blockIdx.x * HG_BN;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t = lane % 4;
    const int wm = warp / 4 * 64, wn = warp % 4 * 32;  // the warp's tile within the block
    const bool vec_a = (reinterpret_cast<unsigned long long>(A) & 15) == 0 && lda % 8 == 0;
    const bool vec_b = (reinterpret_cast<unsigned long long>(B) & 15) == 0 && ldb % 8 == 0;

    uint4 ra[HG_CHUNKS], rb[HG_CHUNKS];
    auto fetch = [&](int k0) {
        if (TA) hg_load<HG_BK, HG_BM>(ra, A, lda, k0, m0, K, M, vec_a);
        else hg_load<HG_BM, HG_BK>(ra, A, lda, m0, k0, M, K, vec_a);
        if (TB) hg_load<HG_BN, HG_BK>(rb, B, ldb, n0, k0, N, K, vec_b);
        else hg_load<HG_BK, HG_BN>(rb, B, ldb, k0, n0, K, N, vec_b);
    };
    auto stage = [&](int buf) {
        if (TA) hg_store<HG_BK, HG_BM>(As[buf], ra);
        else hg_store<HG_BM, HG_BK>(As[buf], ra);
        if (TB) hg_store<HG_BN, HG_BK>(Bs[buf], rb);
        else hg_store<HG_BK, HG_BN>(Bs[buf], rb);
    };

    float acc[4][4][4];  // [m16 tile][n8 tile][fragment register]
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) acc[i][j][r] = 0.0f;

    if (K > 0) {
        fetch(0);
        stage(0);
    }
    __syncthreads();
    int buf = 0;
    for (int k0 = 0; k0 < K; k0 += HG_BK) {
        const bool more = k0 + HG_BK < K;
        if (more) fetch(k0 + HG_BK);
        const unsigned short* sa = As[buf];
        const unsigned short* sb = Bs[buf];
        // Not unrolled, and A fragments loaded one m16 tile at a time: fits in 128 registers
        // (two blocks per SM) without spills.
#pragma unroll 1
        for (int kk = 0; kk < HG_BK; kk += 16) {
            unsigned bf[4][2];
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int n = wn + j * 8 + g, k = kk + 2 * t;
                if (TB) {  // B(k, n) = sb[n·LDB_S + k]
                    const unsigned short* p = sb + n * LDB_S + k;
                    bf[j][0] = hg_pair(p);
                    bf[j][1] = hg_pair(p + 8);
                } else {  // B(k, n) = sb[k·LDB_S + n]
                    const unsigned short* p = sb + k * LDB_S + n;
                    bf[j][0] = hg_pack(p[0], p[LDB_S]);
                    bf[j][1] = hg_pack(p[8 * LDB_S], p[9 * LDB_S]);
                }
            }
#pragma unroll
            for (int i = 0; i < 4; ++i) {
                unsigned af[4];
                const int m = wm + i * 16 + g, k = kk + 2 * t;
                if (TA) {  // A(m, k) = sa[k·LDA_S + m]
                    const unsigned short* p = sa + k * LDA_S + m;
                    af[0] = hg_pack(p[0], p[LDA_S]);
                    af[1] = hg_pack(p[8], p[LDA_S + 8]);
                    af[2] = hg_pack(p[8 * LDA_S], p[9 * LDA_S]);
                    af[3] = hg_pack(p[8 * LDA_S + 8], p[9 * LDA_S + 8]);
                } else {  // A(m, k) = sa[m·LDA_S + k]
                    const unsigned short* p = sa + m * LDA_S + k;
                    af[0] = hg_pair(p);
                    af[1] = hg_pair(p + 8 * LDA_S);
                    af[2] = hg_pair(p + 8);
                    af[3] = hg_pair(p + 8 * LDA_S + 8);
                }
#pragma unroll
                for (int j = 0; j < 4; ++j) mma_bf16_16816(acc[i][j], af, bf[j]);
            }
        }
        if (more) stage(buf ^ 1);
        __syncthreads();
        buf ^= 1;
    }

#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
            const int m = m0 + wm + i * 16 + g + h * 8;
            if (m >= M) continue;
            OutT* crow = C + (long long)m * ldc;
#pragma unroll
            for (int j = 0; j < 4; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int n = n0 + wn + j * 8 + 2 * t + e;
                    if (n >= N) continue;
                    float v = alpha * acc[i][j][h * 2 + e];
                    if (bias != nullptr) v += bias[n];
                    if (accumulate) v += load(crow + n);
                    store(crow + n, v);
                }
        }
}

// The generic batched bf16 GEMMs: fp32 C (gemm_bf16_xx) or bf16 C (gemm_bf16_xx_bf16out).
#define GEMM_BF16(NAME, TA, TB, OUT_T)                                                          \
    extern "C" __global__ void __launch_bounds__(HG_THREADS, 2) NAME(                           \
        OUT_T* __restrict__ C,                   /* [batch][M, ldc] at the strides below */     \
        const __nv_bfloat16* __restrict__ A,     /* op(A) [M, K]: [M, lda] or [K, lda] */       \
        const __nv_bfloat16* __restrict__ B,     /* op(B) [K, N]: [K, ldb] or [N, ldb] */       \
        const float* __restrict__ bias,          /* [N] fp32, or null */                        \
        int M, int N, int K, int lda, int ldb, int ldc,                                        \
        long long sa_outer, long long sa_inner, long long sb_outer, long long sb_inner,        \
        long long sc_outer, long long sc_inner, int batch_inner, float alpha, int accumulate) { \
        const long long zo = blockIdx.z / batch_inner, zi = blockIdx.z % batch_inner;          \
        hgemm_block<TA, TB, OUT_T>(                                                            \
            C + zo * sc_outer + zi * sc_inner,                                                 \
            reinterpret_cast<const unsigned short*>(A + zo * sa_outer + zi * sa_inner),        \
            reinterpret_cast<const unsigned short*>(B + zo * sb_outer + zi * sb_inner), bias,  \
            M, N, K, lda, ldb, ldc, alpha, accumulate != 0);                                   \
    }

GEMM_BF16(gemm_bf16_nn, false, false, float)
GEMM_BF16(gemm_bf16_nt, false, true, float)
GEMM_BF16(gemm_bf16_tn, true, false, float)
GEMM_BF16(gemm_bf16_tt, true, true, float)
GEMM_BF16(gemm_bf16_nn_bf16out, false, false, __nv_bfloat16)
GEMM_BF16(gemm_bf16_nt_bf16out, false, true, __nv_bfloat16)
GEMM_BF16(gemm_bf16_tn_bf16out, true, false, __nv_bfloat16)
GEMM_BF16(gemm_bf16_tt_bf16out, true, true, __nv_bfloat16)

// ---------------------------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------------------------

// out = inp rounded to the nearest bf16, ties to even (NaN stays NaN, overflow gives ±inf).
extern "C" __global__ void f32_to_bf16(
    __nv_bfloat16* __restrict__ out,  // [n]
    const float* __restrict__ inp,    // [n]
    long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __float2bfloat16_rn(inp[i]);
}

// out = inp widened to fp32 (exact).
extern "C" __global__ void bf16_to_f32(
    float* __restrict__ out,                  // [n]
    const __nv_bfloat16* __restrict__ inp,    // [n]
    long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = __bfloat162float(inp[i]);
}
