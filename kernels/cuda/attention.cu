// Causal multi-head self-attention (mirrors convoy-kernels' attention.rs): the two row-wise
// softmaxes. The batched matrix products around them are the GEMMs of matmul.cu, which read q,
// k, v in place in qkv and write the heads in place in out (the strides are at the top of
// matmul.cu), so no head-major copies are made.
//
// Layouts as the CPU: qkv [B, T, 3C] (q = channels 0..C, k = C..2C, v = 2C..3C; head h uses
// channels h*HS .. (h+1)*HS of each, HS = C/NH), out [B, T, C], preatt and att [B, NH, T, T]
// (scaled scores and their causal softmax, 0 above the diagonal in both). scale = 1/sqrt(HS).
// The products also compute the masked upper triangle, whose zeros add nothing, like the CPU.
//
// Forward (bh = b*NH + h, one product per bh in each GEMM call):
//   1. GEMM  preatt[bh] [T, T]  = q[bh]·k[bh]^T                    (fp32 out, alpha 1)
//   2. attention_softmax_forward  preatt -> preatt (scaled, causal), att
//   3. GEMM  out[bh] [T, HS]    = att[bh]·v[bh]                     (out in the storage type)
// Backward (dqkv [B, T, 3C] accumulates, fp32; datt and dpreatt [B, NH, T, T] are scratch):
//   1. GEMM  datt[bh]           = dout[bh]·v[bh]^T                  (fp32 out)
//   2. GEMM  dv[bh]            += att[bh]^T·dout[bh]                (into dqkv's v part)
//   3. attention_softmax_backward  datt, att -> dpreatt (and zeros datt above the diagonal),
//      the gradient w.r.t. the scaled scores, as the CPU's
//   4. GEMM  dq[bh]            += scale·dpreatt[bh]·k[bh]           (into dqkv's q part)
//   5. GEMM  dk[bh]            += scale·dpreatt[bh]^T·q[bh]         (into dqkv's k part)
//
// Storage types: preatt and datt are fp32 (GEMM outputs read once by a softmax); att, and
// dpreatt (an operand of products only), are the activations' type T: fp32, or bf16 for the
// `_bf16` instances (common.cuh).
//
// Launch shapes: one block per row of the [B*NH*T, T] matrices (grid-stride over rows),
// blockDim.x a multiple of 32 and <= 1024, fixed for reproducible row sums.

// Row r of preatt, att [rows = B*NH*T, T] is query position t = r % T. On entry preatt holds the
// scores of the GEMM; on exit preatt[r, j] = scale*score for j <= t and 0 beyond, and
// att[r, :] = softmax of preatt[r, 0..=t] (max-shifted), 0 beyond. Overwrites att.
template <typename A>
__device__ void softmax_forward_t(float* preatt, A* att, int rows, int T, float scale) {
    __shared__ float shared[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const int t = r % T;
        float* p = preatt + (long long)r * T;
        A* a = att + (long long)r * T;
        float m = __int_as_float(0xff800000);  // -inf
        for (int j = threadIdx.x; j < T; j += blockDim.x) {
            if (j <= t) {
                const float s = p[j] * scale;
                p[j] = s;
                m = fmaxf(m, s);
            } else {
                p[j] = 0.0f;
                store(a + j, 0.0f);
            }
        }
        m = block_max(m, shared);
        // The exponentials are summed in fp32 and stored once, normalised: a bf16 att is one
        // rounding of the fp32 value.
        float sum = 0.0f;
        for (int j = threadIdx.x; j <= t; j += blockDim.x) sum += expf(p[j] - m);
        const float inv = 1.0f / block_sum(sum, shared);
        for (int j = threadIdx.x; j <= t; j += blockDim.x) store(a + j, expf(p[j] - m) * inv);
    }
}

// Softmax backward per row r (query position t = r % T) of [rows = B*NH*T, T]:
// dpreatt[r, j] = scale*att[r, j]*(datt[r, j] - sum_{j' <= t} att[r, j']*datt[r, j']) for j <= t,
// 0 beyond; datt is zeroed beyond t (as the CPU's). Overwrites dpreatt.
template <typename A>
__device__ void softmax_backward_t(A* dpreatt, float* datt, const A* att, int rows, int T,
                                   float scale) {
    __shared__ float shared[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const int t = r % T;
        const long long off = (long long)r * T;
        A* dp = dpreatt + off;
        float* da = datt + off;
        const A* a = att + off;
        float w = 0.0f;
        for (int j = threadIdx.x; j < T; j += blockDim.x) {
            if (j <= t) {
                w += load(a + j) * da[j];
            } else {
                store(dp + j, 0.0f);
                da[j] = 0.0f;
            }
        }
        w = block_sum(w, shared);
        for (int j = threadIdx.x; j <= t; j += blockDim.x) {
            store(dp + j, scale * (load(a + j) * (da[j] - w)));
        }
    }
}

#define ATTENTION_SOFTMAX(SUFFIX, A)                                                        \
    extern "C" __global__ void attention_softmax_forward##SUFFIX(                           \
        float* preatt,       /* [B, NH, T, T] */                                            \
        A* att,              /* [B, NH, T, T] */                                            \
        int rows, int T,     /* rows = B*NH*T */                                            \
        float scale) {                                                                      \
        softmax_forward_t(preatt, att, rows, T, scale);                                     \
    }                                                                                       \
    extern "C" __global__ void attention_softmax_backward##SUFFIX(                          \
        A* dpreatt,          /* [B, NH, T, T] */                                            \
        float* datt,         /* [B, NH, T, T] */                                            \
        const A* att,        /* [B, NH, T, T] */                                            \
        int rows, int T,     /* rows = B*NH*T */                                            \
        float scale) {                                                                      \
        softmax_backward_t(dpreatt, datt, att, rows, T, scale);                             \
    }

ATTENTION_SOFTMAX(, float)
ATTENTION_SOFTMAX(_bf16, bf16)

// ---------------------------------------------------------------------------------------------
// Flash attention (bf16 activations, tensor cores): the same causal attention without the
// [B, NH, T, T] matrices. Selected by a spec's `[kernels] attention = "flash"`; for head sizes HS in
// {16, 32, 64} (the `_hs{HS}` instances).
//
// Forward (flash_attention_forward_hs*): one block of 4 warps per 64 queries of one (b, h);
// warp w owns queries 16w..16w+15 of the block. Over the key tiles of 64 up to the block's
// last query (causal), S = scale·Q·Kᵀ on the tensor cores, an online softmax per row (running
// max m and sum l in fp32, the 4 lanes of a row combined by shuffles), O += P·V with P
// rounded to bf16; at the end out = O/l (bf16) and lse = m + log(l) per query (fp32), which
// the backward uses to recompute P = exp(S − lse) exactly as the forward normalised it.
//
// Backward, deterministic (no atomics; every output element is owned by one thread):
//   1. flash_attention_backward_delta: delta [B, NH, T] = rowsum(dout ∘ out) per query (the
//      softmax backward's Σ_j P·dP, from the forward's output).
//   2. flash_attention_backward_dkv_hs*: one block per 64 keys of one (b, h), warp w owning
//      keys 16w..16w+15; over the query tiles from the block's first key on: Pᵀ = exp(scale·K·Qᵀ
//      − lse), dV += Pᵀ·dO, dPᵀ = V·dOᵀ, dSᵀ = Pᵀ∘(dPᵀ − delta), dK += scale·dSᵀ·Q.
//   3. flash_attention_backward_dq_hs*: one block per 64 queries; over the key tiles up to the
//      block's last query: P = exp(scale·Q·Kᵀ − lse), dP = dO·Vᵀ, dS = P∘(dP − delta),
//      dQ += scale·dS·K.
//   dq, dk, dv are added into dqkv [B, T, 3C] (fp32), like the materialized path.
// The softmax recomputation costs one more Q·Kᵀ per tile in each of 2 and 3 (as FlashAttention-2
// without its atomics): extra FLOPs instead of O(T²) memory traffic.
//
// Layouts: qkv [B, T, 3C] bf16 (q, k, v of head h at channels h·HS, C + h·HS, 2C + h·HS),
// out and dout [B, T, C] bf16 (dout: the fp32 gradient rounded by the host op), lse and delta
// [B, NH, T] fp32. C·2 bytes must be a multiple of 16 (it is when HS is a multiple of 16) and
// qkv, out, dout 16-byte aligned (checked by the host). Launch: block (128, 1, 1), grid
// (ceil(T/64), B·NH, 1); static shared memory only (≤ 37 KiB at HS = 64).

#define FA_TILE 64      // queries or keys per tile
#define FA_THREADS 128  // 4 warps of 16 rows
#define FA_PAD 8        // bf16 per shared row: 16-byte rows, conflict-free fragment loads
#define FA_NEG_INF __int_as_float(0xff800000)

// Rows r0.. r0+63 (zeros past T) of HS bf16 each, row r at g + r·ld, into s[64][HS + FA_PAD].
template <int HS>
__device__ __forceinline__ void fa_load(unsigned short* s, const unsigned short* g, long long ld,
                                        int r0, int T) {
    constexpr int CHUNKS = HS / 8;  // 16-byte chunks per row
    for (int c = threadIdx.x; c < FA_TILE * CHUNKS; c += FA_THREADS) {
        const int r = c / CHUNKS, col = c % CHUNKS * 8;
        uint4 v = make_uint4(0u, 0u, 0u, 0u);
        if (r0 + r < T) v = *reinterpret_cast<const uint4*>(g + (long long)(r0 + r) * ld + col);
        *reinterpret_cast<uint4*>(s + r * (HS + FA_PAD) + col) = v;
    }
}

// The A fragments of rows m0..m0+15 of a row-major tile s[.][HS + FA_PAD] (k = its columns).
template <int HS>
__device__ __forceinline__ void fa_rows(unsigned (&a)[HS / 16][4], const unsigned short* s,
                                        int m0) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int kk = 0; kk < HS / 16; ++kk) {
        const unsigned short* p = s + (m0 + g) * (HS + FA_PAD) + kk * 16 + 2 * t;
        a[kk][0] = hg_pair(p);
        a[kk][1] = hg_pair(p + 8 * (HS + FA_PAD));
        a[kk][2] = hg_pair(p + 8);
        a[kk][3] = hg_pair(p + 8 * (HS + FA_PAD) + 8);
    }
}

// acc[j] (16 rows × 64 columns, n8 tile j) += A (16 × HS, fragments a) · Xᵀ, X = the tile
// s[64][HS + FA_PAD]: B(k, n) = X[n][k], column n of the product is row n of X.
template <int HS>
__device__ __forceinline__ void fa_mma_nt(float (&acc)[8][4], const unsigned (&a)[HS / 16][4],
                                          const unsigned short* s) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
#pragma unroll
    for (int kk = 0; kk < HS / 16; ++kk)
#pragma unroll
        for (int j = 0; j < 8; ++j) {
            const unsigned short* p = s + (8 * j + g) * (HS + FA_PAD) + kk * 16 + 2 * t;
            const unsigned b[2] = {hg_pair(p), hg_pair(p + 8)};
            mma_bf16_16816(acc[j], a[kk], b);
        }
}

// Two fp32 as one register of two bf16 (the first in the low half), rounded to nearest even.
__device__ __forceinline__ unsigned fa_pack(float lo, float hi) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<const unsigned*>(&v);
}

// acc[jo] (16 rows × HS, n8 tile jo) += P · X with P (16 × 64) the accumulators p as bf16 A
// fragments (k = their columns) and X = the tile s[64][HS + FA_PAD]: B(k, n) = X[k][n].
template <int HS>
__device__ __forceinline__ void fa_mma_pn(float (&acc)[HS / 8][4], const float (&p)[8][4],
                                          const unsigned short* s) {
    const int lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    constexpr int LD = HS + FA_PAD;
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
        const unsigned a[4] = {fa_pack(p[2 * kk][0], p[2 * kk][1]),
                               fa_pack(p[2 * kk][2], p[2 * kk][3]),
                               fa_pack(p[2 * kk + 1][0], p[2 * kk + 1][1]),
                               fa_pack(p[2 * kk + 1][2], p[2 * kk + 1][3])};
#pragma unroll
        for (int jo = 0; jo < HS / 8; ++jo) {
            const unsigned short* q = s + (16 * kk + 2 * t) * LD + 8 * jo + g;
            const unsigned b[2] = {hg_pack(q[0], q[LD]), hg_pack(q[8 * LD], q[9 * LD])};
            mma_bf16_16816(acc[jo], a, b);
        }
    }
}

// Sum and max over the 4 lanes that hold one row of an accumulator (lanes 4g .. 4g+3).
__device__ __forceinline__ float fa_row_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}
__device__ __forceinline__ float fa_row_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}

template <int HS>
__device__ void flash_forward_t(bf16* out, float* lse, const bf16* qkv, int B, int T, int NH,
                                float scale) {
    __shared__ __align__(16) unsigned short Qs[FA_TILE * (HS + FA_PAD)];
    __shared__ __align__(16) unsigned short Ks[FA_TILE * (HS + FA_PAD)];
    __shared__ __align__(16) unsigned short Vs[FA_TILE * (HS + FA_PAD)];
    const int C = NH * HS, bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int q0 = blockIdx.x * FA_TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const unsigned short* base =
        reinterpret_cast<const unsigned short*>(qkv) + (long long)b * T * 3 * C + h * HS;
    fa_load<HS>(Qs, base, 3 * C, q0, T);
    __syncthreads();
    unsigned qf[HS / 16][4];
    fa_rows<HS>(qf, Qs, 16 * warp);

    float o[HS / 8][4];
#pragma unroll
    for (int j = 0; j < HS / 8; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) o[j][r] = 0.0f;
    float m[2] = {FA_NEG_INF, FA_NEG_INF}, l[2] = {0.0f, 0.0f};
    const int last = min(q0 + FA_TILE, T) - 1;  // the block's last query
    for (int k0 = 0; k0 <= last; k0 += FA_TILE) {
        __syncthreads();  // the previous tiles are consumed
        fa_load<HS>(Ks, base + C, 3 * C, k0, T);
        fa_load<HS>(Vs, base + 2 * C, 3 * C, k0, T);
        __syncthreads();
        float s[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) s[j][r] = 0.0f;
        fa_mma_nt<HS>(s, qf, Ks);
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const int q = q0 + 16 * warp + g + 8 * hf;
            float mx = FA_NEG_INF;
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int key = k0 + 8 * j + 2 * t + e;
                    const float v = key <= q && key < T ? s[j][2 * hf + e] * scale : FA_NEG_INF;
                    s[j][2 * hf + e] = v;
                    mx = fmaxf(mx, v);
                }
            const float m_new = fmaxf(m[hf], fa_row_max(mx));
            // A row with no key yet (only past T) keeps exp(-inf - 0) = 0 everywhere.
            const float shift = m_new == FA_NEG_INF ? 0.0f : m_new;
            const float rescale = expf(m[hf] - shift);
            float sum = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float p = expf(s[j][2 * hf + e] - shift);
                    s[j][2 * hf + e] = p;
                    sum += p;
                }
            l[hf] = l[hf] * rescale + fa_row_sum(sum);
            m[hf] = m_new;
#pragma unroll
            for (int jo = 0; jo < HS / 8; ++jo) {
                o[jo][2 * hf] *= rescale;
                o[jo][2 * hf + 1] *= rescale;
            }
        }
        fa_mma_pn<HS>(o, s, Vs);
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int q = q0 + 16 * warp + g + 8 * hf;
        if (q >= T) continue;
        const float inv = 1.0f / l[hf];
        bf16* row = out + ((long long)b * T + q) * C + h * HS;
#pragma unroll
        for (int jo = 0; jo < HS / 8; ++jo) {
            *reinterpret_cast<__nv_bfloat162*>(row + 8 * jo + 2 * t) =
                __floats2bfloat162_rn(o[jo][2 * hf] * inv, o[jo][2 * hf + 1] * inv);
        }
        if (t == 0) lse[(long long)bh * T + q] = m[hf] + logf(l[hf]);
    }
}

// delta [B, NH, T] = Σ_c dout[b, t, h·HS + c]·out[b, t, h·HS + c]: one thread per (b, h, t),
// any 1-D grid. dout is the bf16-rounded gradient the products use, so that delta and dP agree.
extern "C" __global__ void flash_attention_backward_delta(
    float* delta,          // [B, NH, T]
    const bf16* dout,      // [B, T, C]
    const bf16* out,       // [B, T, C]
    int B, int T, int NH, int HS) {
    const int C = NH * HS;
    CONVOY_FOR_EACH(i, (long long)B * NH * T) {
        const int q = (int)(i % T);
        const long long bh = i / T;
        const int h = (int)(bh % NH);
        const long long b = bh / NH;
        const long long off = (b * T + q) * C + (long long)h * HS;
        float d = 0.0f;
        for (int c = 0; c < HS; ++c) {
            d += __bfloat162float(dout[off + c]) * __bfloat162float(out[off + c]);
        }
        delta[i] = d;
    }
}

template <int HS>
__device__ void flash_backward_dkv_t(float* dqkv, const bf16* dout, const bf16* qkv,
                                     const float* lse, const float* delta, int B, int T, int NH,
                                     float scale) {
    __shared__ __align__(16) unsigned short Xs[FA_TILE * (HS + FA_PAD)];  // K, then Q tiles
    __shared__ __align__(16) unsigned short Ys[FA_TILE * (HS + FA_PAD)];  // V, then dO tiles
    __shared__ float Ls[FA_TILE], Ds[FA_TILE];
    const int C = NH * HS, bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int k0 = blockIdx.x * FA_TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const unsigned short* base =
        reinterpret_cast<const unsigned short*>(qkv) + (long long)b * T * 3 * C + h * HS;
    const unsigned short* dbase =
        reinterpret_cast<const unsigned short*>(dout) + (long long)b * T * C + h * HS;
    fa_load<HS>(Xs, base + C, 3 * C, k0, T);
    fa_load<HS>(Ys, base + 2 * C, 3 * C, k0, T);
    __syncthreads();
    unsigned kf[HS / 16][4], vf[HS / 16][4];
    fa_rows<HS>(kf, Xs, 16 * warp);
    fa_rows<HS>(vf, Ys, 16 * warp);

    float dk[HS / 8][4], dv[HS / 8][4];
#pragma unroll
    for (int j = 0; j < HS / 8; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) dk[j][r] = dv[j][r] = 0.0f;
    for (int q0 = k0; q0 < T; q0 += FA_TILE) {
        __syncthreads();  // the previous tiles (or K, V) are consumed
        fa_load<HS>(Xs, base, 3 * C, q0, T);
        fa_load<HS>(Ys, dbase, C, q0, T);
        for (int i = threadIdx.x; i < FA_TILE; i += FA_THREADS) {
            const bool in = q0 + i < T;
            Ls[i] = in ? lse[(long long)bh * T + q0 + i] : 0.0f;
            Ds[i] = in ? delta[(long long)bh * T + q0 + i] : 0.0f;
        }
        __syncthreads();
        // Pᵀ [16 keys × 64 queries] = exp(scale·K·Qᵀ − lse), 0 where the query precedes the key.
        float p[8][4], dp[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) p[j][r] = dp[j][r] = 0.0f;
        fa_mma_nt<HS>(p, kf, Xs);
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const int key = k0 + 16 * warp + g + 8 * hf;
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int qi = 8 * j + 2 * t + e, q = q0 + qi;
                    float& x = p[j][2 * hf + e];
                    x = q >= key && q < T ? expf(x * scale - Ls[qi]) : 0.0f;
                }
        }
        fa_mma_pn<HS>(dv, p, Ys);   // dV += Pᵀ·dO
        fa_mma_nt<HS>(dp, vf, Ys);  // dPᵀ = V·dOᵀ
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int qi = 8 * j + 2 * t + (r & 1);
                p[j][r] *= dp[j][r] - Ds[qi];  // dSᵀ
            }
        fa_mma_pn<HS>(dk, p, Xs);  // dK += dSᵀ·Q (scaled at the end)
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int key = k0 + 16 * warp + g + 8 * hf;
        if (key >= T) continue;
        float* row = dqkv + ((long long)b * T + key) * 3 * C + h * HS;
#pragma unroll
        for (int jo = 0; jo < HS / 8; ++jo)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
                const int col = 8 * jo + 2 * t + e;
                row[C + col] += scale * dk[jo][2 * hf + e];
                row[2 * C + col] += dv[jo][2 * hf + e];
            }
    }
}

template <int HS>
__device__ void flash_backward_dq_t(float* dqkv, const bf16* dout, const bf16* qkv,
                                    const float* lse, const float* delta, int B, int T, int NH,
                                    float scale) {
    __shared__ __align__(16) unsigned short Ks[FA_TILE * (HS + FA_PAD)];  // Q, then K tiles
    __shared__ __align__(16) unsigned short Vs[FA_TILE * (HS + FA_PAD)];  // dO, then V tiles
    const int C = NH * HS, bh = blockIdx.y, b = bh / NH, h = bh % NH;
    const int q0 = blockIdx.x * FA_TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
    const unsigned short* base =
        reinterpret_cast<const unsigned short*>(qkv) + (long long)b * T * 3 * C + h * HS;
    const unsigned short* dbase =
        reinterpret_cast<const unsigned short*>(dout) + (long long)b * T * C + h * HS;
    fa_load<HS>(Ks, base, 3 * C, q0, T);
    fa_load<HS>(Vs, dbase, C, q0, T);
    __syncthreads();
    unsigned qf[HS / 16][4], dof[HS / 16][4];
    fa_rows<HS>(qf, Ks, 16 * warp);
    fa_rows<HS>(dof, Vs, 16 * warp);
    float row_lse[2], row_delta[2];
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int q = q0 + 16 * warp + g + 8 * hf;
        row_lse[hf] = q < T ? lse[(long long)bh * T + q] : 0.0f;
        row_delta[hf] = q < T ? delta[(long long)bh * T + q] : 0.0f;
    }

    float dq[HS / 8][4];
#pragma unroll
    for (int j = 0; j < HS / 8; ++j)
#pragma unroll
        for (int r = 0; r < 4; ++r) dq[j][r] = 0.0f;
    const int last = min(q0 + FA_TILE, T) - 1;
    for (int k0 = 0; k0 <= last; k0 += FA_TILE) {
        __syncthreads();  // the previous tiles (or Q, dO) are consumed
        fa_load<HS>(Ks, base + C, 3 * C, k0, T);
        fa_load<HS>(Vs, base + 2 * C, 3 * C, k0, T);
        __syncthreads();
        float p[8][4], dp[8][4];
#pragma unroll
        for (int j = 0; j < 8; ++j)
#pragma unroll
            for (int r = 0; r < 4; ++r) p[j][r] = dp[j][r] = 0.0f;
        fa_mma_nt<HS>(p, qf, Ks);   // S = Q·Kᵀ
        fa_mma_nt<HS>(dp, dof, Vs);  // dP = dO·Vᵀ
#pragma unroll
        for (int hf = 0; hf < 2; ++hf) {
            const int q = q0 + 16 * warp + g + 8 * hf;
#pragma unroll
            for (int j = 0; j < 8; ++j)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const int key = k0 + 8 * j + 2 * t + e;
                    float& x = p[j][2 * hf + e];
                    const float prob = key <= q && key < T ? expf(x * scale - row_lse[hf]) : 0.0f;
                    x = prob * (dp[j][2 * hf + e] - row_delta[hf]);  // dS
                }
        }
        fa_mma_pn<HS>(dq, p, Ks);  // dQ += dS·K (scaled at the end)
    }
#pragma unroll
    for (int hf = 0; hf < 2; ++hf) {
        const int q = q0 + 16 * warp + g + 8 * hf;
        if (q >= T) continue;
        float* row = dqkv + ((long long)b * T + q) * 3 * C + h * HS;
#pragma unroll
        for (int jo = 0; jo < HS / 8; ++jo)
#pragma unroll
            for (int e = 0; e < 2; ++e) row[8 * jo + 2 * t + e] += scale * dq[jo][2 * hf + e];
    }
}

// The two backward kernels share their parameters.
#define FLASH_BACKWARD(NAME, FN, HS)                                                        \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                \
        NAME(float* dqkv,        /* [B, T, 3C] += */                                        \
             const bf16* dout,   /* [B, T, C] */                                            \
             const bf16* qkv,    /* [B, T, 3C] */                                           \
             const float* lse,   /* [B, NH, T] */                                           \
             const float* delta, /* [B, NH, T] */                                           \
             int B, int T, int NH, float scale) {                                           \
        FN<HS>(dqkv, dout, qkv, lse, delta, B, T, NH, scale);                               \
    }

#define FLASH_ATTENTION(HS)                                                                 \
    extern "C" __global__ void __launch_bounds__(FA_THREADS)                                \
        flash_attention_forward_hs##HS(bf16* out,        /* [B, T, C] */                    \
                                       float* lse,       /* [B, NH, T] */                   \
                                       const bf16* qkv,  /* [B, T, 3C] */                   \
                                       int B, int T, int NH, float scale) {                 \
        flash_forward_t<HS>(out, lse, qkv, B, T, NH, scale);                                \
    }                                                                                       \
    FLASH_BACKWARD(flash_attention_backward_dkv_hs##HS, flash_backward_dkv_t, HS)           \
    FLASH_BACKWARD(flash_attention_backward_dq_hs##HS, flash_backward_dq_t, HS)

FLASH_ATTENTION(16)
FLASH_ATTENTION(32)
FLASH_ATTENTION(64)
