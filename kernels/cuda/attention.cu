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
