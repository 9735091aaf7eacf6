// Causal multi-head self-attention (mirrors convoy-kernels' attention.rs), everything except the
// batched matrix products, which are GEMMs of matmul.cu chained between these kernels.
//
// Layouts as the CPU: inp = qkv [B, T, 3C] (q = channels 0..C, k = C..2C, v = 2C..3C; head h
// uses channels h*HS .. (h+1)*HS of each, HS = C/NH), out [B, T, C], preatt and att
// [B, NH, T, T] (scaled scores and their causal softmax, 0 above the diagonal in both).
// Scratch (head-major, one [T, HS] matrix per (b, h), bh = b*NH + h): q, k, v, vaccum and, in
// the backward, dvaccum, dq, dk, dv, all [B, NH, T, HS]; the forward's q, k, v are needed again
// by the backward (keep them, or recompute them with attention_permute).
//
// The GEMMs: B*NH independent row-major products per call, batch strides T*HS for [T, HS]
// matrices and T*T for [T, T] ones. Like the CPU they also compute the masked upper triangle,
// whose zeros add nothing. scale = 1/sqrt(HS).
//
// Forward:
//   1. attention_permute          inp [B, T, 3C] -> q, k, v [B, NH, T, HS]
//   2. GEMM  preatt[bh] [T, T]  = q[bh] [T, HS] * k[bh]^T [HS, T]          (A*B^T, overwrite)
//   3. attention_softmax_forward  preatt -> preatt (scaled, causal), att
//      Pass scale = 1/sqrt(HS) when step 2 ran with alpha = 1, or scale = 1 when step 2 already
//      applied alpha = 1/sqrt(HS); either way preatt ends as the CPU's.
//   4. GEMM  vaccum[bh] [T, HS] = att[bh] [T, T] * v[bh] [T, HS]           (A*B, overwrite)
//   5. attention_unpermute        vaccum [B, NH, T, HS] -> out [B, T, C]
// Backward (dinp [B, T, 3C] accumulates; datt and dpreatt [B, NH, T, T] are scratch, fully
// overwritten):
//   1. attention_unpermute_backward  dout [B, T, C] -> dvaccum [B, NH, T, HS]
//   2. GEMM  datt[bh] [T, T]  = dvaccum[bh] [T, HS] * v[bh]^T [HS, T]        (A*B^T, overwrite)
//   3. GEMM  dv[bh] [T, HS]   = att[bh]^T [T, T] * dvaccum[bh] [T, HS]       (A^T*B, overwrite)
//   4. attention_softmax_backward    datt, att -> dpreatt (and zeros datt above the diagonal)
//      With scale = 1 dpreatt is the CPU's (gradient w.r.t. the scaled scores) and steps 5, 6
//      run with alpha = 1/sqrt(HS); with scale = 1/sqrt(HS) it is folded in here and steps 5, 6
//      run with alpha = 1.
//   5. GEMM  dq[bh] [T, HS]   = dpreatt[bh] [T, T] * k[bh] [T, HS]          (A*B, overwrite)
//   6. GEMM  dk[bh] [T, HS]   = dpreatt[bh]^T [T, T] * q[bh] [T, HS]         (A^T*B, overwrite)
//   7. attention_permute_backward    dinp [B, T, 3C] += dq, dk, dv
//
// Launch shapes: the permutes are one thread per element of a [B, NH, T, HS] buffer, grid-stride
// (any 1-D grid); the softmaxes are one block per row of the [B*NH*T, T] matrices (grid-stride
// over rows), blockDim.x a multiple of 32 and <= 1024, fixed for reproducible row sums.

#define CONVOY_FOR_EACH(i, n)                                                       \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)

// The offset of element i of a [B, NH, T, HS] buffer in a [B, T, width] one: its q part for
// width = 3C (k and v follow at + C, + 2C), the whole buffer for width = C.
__device__ __forceinline__ long long qkv_offset(long long i, int T, int NH, int HS, int width) {
    const int d = (int)(i % HS);
    long long r = i / HS;
    const int t = (int)(r % T);
    r /= T;
    const int h = (int)(r % NH);
    const long long b = r / NH;
    return (b * T + t) * width + (long long)h * HS + d;
}

// q, k, v [B, NH, T, HS] = the three parts of inp [B, T, 3C], head-major. Overwrites q, k, v.
extern "C" __global__ void attention_permute(
    float* q,             // [B, NH, T, HS]
    float* k,             // [B, NH, T, HS]
    float* v,             // [B, NH, T, HS]
    const float* inp,     // [B, T, 3C], C = NH*HS
    int B, int T, int NH, int HS) {
    const int C = NH * HS;
    const long long n = (long long)B * NH * T * HS;
    CONVOY_FOR_EACH(i, n) {
        const long long o = qkv_offset(i, T, NH, HS, 3 * C);
        q[i] = inp[o];
        k[i] = inp[o + C];
        v[i] = inp[o + 2 * C];
    }
}

// dinp [B, T, 3C] += dq, dk, dv [B, NH, T, HS] in the q, k, v parts (inverse of the permute).
extern "C" __global__ void attention_permute_backward(
    float* dinp,          // [B, T, 3C]
    const float* dq,      // [B, NH, T, HS]
    const float* dk,      // [B, NH, T, HS]
    const float* dv,      // [B, NH, T, HS]
    int B, int T, int NH, int HS) {
    const int C = NH * HS;
    const long long n = (long long)B * NH * T * HS;
    CONVOY_FOR_EACH(i, n) {
        const long long o = qkv_offset(i, T, NH, HS, 3 * C);
        dinp[o] += dq[i];
        dinp[o + C] += dk[i];
        dinp[o + 2 * C] += dv[i];
    }
}

// out [B, T, C] = vaccum [B, NH, T, HS] with the heads side by side. Overwrites out.
extern "C" __global__ void attention_unpermute(
    float* out,           // [B, T, C]
    const float* vaccum,  // [B, NH, T, HS]
    int B, int T, int NH, int HS) {
    const long long n = (long long)B * NH * T * HS;
    CONVOY_FOR_EACH(i, n) {
        out[qkv_offset(i, T, NH, HS, NH * HS)] = vaccum[i];
    }
}

// dvaccum [B, NH, T, HS] = dout [B, T, C] head-major (the backward of the unpermute, which has
// one destination per element: overwrites dvaccum).
extern "C" __global__ void attention_unpermute_backward(
    float* dvaccum,       // [B, NH, T, HS]
    const float* dout,    // [B, T, C]
    int B, int T, int NH, int HS) {
    const long long n = (long long)B * NH * T * HS;
    CONVOY_FOR_EACH(i, n) {
        dvaccum[i] = dout[qkv_offset(i, T, NH, HS, NH * HS)];
    }
}

// Row r of preatt, att [rows = B*NH*T, T] is query position t = r % T. On entry preatt holds the
// scores of the GEMM; on exit preatt[r, j] = scale*score for j <= t and 0 beyond, and
// att[r, :] = softmax of preatt[r, 0..=t] (max-shifted), 0 beyond. Overwrites att.
extern "C" __global__ void attention_softmax_forward(
    float* preatt,        // [B, NH, T, T]
    float* att,           // [B, NH, T, T]
    int rows, int T,      // rows = B*NH*T
    float scale) {
    __shared__ float shared[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const int t = r % T;
        float* p = preatt + (long long)r * T;
        float* a = att + (long long)r * T;
        float m = __int_as_float(0xff800000);  // -inf
        for (int j = threadIdx.x; j < T; j += blockDim.x) {
            if (j <= t) {
                const float s = p[j] * scale;
                p[j] = s;
                m = fmaxf(m, s);
            } else {
                p[j] = 0.0f;
                a[j] = 0.0f;
            }
        }
        m = block_max(m, shared);
        float sum = 0.0f;
        for (int j = threadIdx.x; j <= t; j += blockDim.x) {
            const float e = expf(p[j] - m);
            a[j] = e;
            sum += e;
        }
        const float inv = 1.0f / block_sum(sum, shared);
        for (int j = threadIdx.x; j <= t; j += blockDim.x) a[j] *= inv;
    }
}

// Softmax backward per row r (query position t = r % T) of [rows = B*NH*T, T]:
// dpreatt[r, j] = scale*att[r, j]*(datt[r, j] - sum_{j' <= t} att[r, j']*datt[r, j']) for j <= t,
// 0 beyond; datt is zeroed beyond t (as the CPU's). Overwrites dpreatt.
extern "C" __global__ void attention_softmax_backward(
    float* dpreatt,       // [B, NH, T, T]
    float* datt,          // [B, NH, T, T]
    const float* att,     // [B, NH, T, T]
    int rows, int T,      // rows = B*NH*T
    float scale) {
    __shared__ float shared[32];
    for (int r = blockIdx.x; r < rows; r += gridDim.x) {
        const int t = r % T;
        const long long off = (long long)r * T;
        float* dp = dpreatt + off;
        float* da = datt + off;
        const float* a = att + off;
        float w = 0.0f;
        for (int j = threadIdx.x; j < T; j += blockDim.x) {
            if (j <= t) {
                w += a[j] * da[j];
            } else {
                dp[j] = 0.0f;
                da[j] = 0.0f;
            }
        }
        w = block_sum(w, shared);
        for (int j = threadIdx.x; j <= t; j += blockDim.x) {
            dp[j] = scale * (a[j] * (da[j] - w));
        }
    }
}
