// LayerNorm over the last dimension (mirrors convoy-kernels' layernorm.rs): biased variance,
// eps = 1e-5 (convoy_kernels::LAYERNORM_EPS), two-pass mean and variance like the CPU.
//
// Launch shapes:
//   - layernorm_forward, layernorm_backward_dinp: one block per row (grid-stride over rows, so
//     any grid works), blockDim.x a multiple of 32 and <= 1024 (block_sum). The row sums depend
//     on blockDim.x: keep it fixed for run-to-run identical results.
//   - layernorm_backward_dparams_partial: one block per chunk of `rows_per_block` rows
//     (R = ceil(N / rows_per_block) chunks, grid-stride), any block size; writes the chunk sums
//     into the scratch buffers partial_dweight, partial_dbias [R, C] (overwritten).
//   - layernorm_backward_dparams_reduce: one thread per channel (any 1-D grid), adding the R
//     partial rows in order into dweight, dbias.
// The backward is three launches: dinp (independent of the other two), then partial, then
// reduce. No float atomics: every sum has a fixed order for a fixed launch shape.
// The first three kernels also come with bf16 activations (inp, out) as `*_bf16` (common.cuh).

#define CONVOY_LAYERNORM_EPS 1e-5f

// out [N, C] = (inp - mean)*rstd*weight + bias per row; saves mean [N] and
// rstd [N] = 1/sqrt(var + eps). All three are overwritten.
template <typename T>
__device__ void layernorm_forward_t(T* out, float* mean, float* rstd, const T* inp,
                                    const float* weight, const float* bias, int N, int C) {
    __shared__ float shared[32];
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const T* x = inp + (long long)row * C;
        T* o = out + (long long)row * C;
        float s = 0.0f;
        for (int i = threadIdx.x; i < C; i += blockDim.x) s += load(x + i);
        const float mu = block_sum(s, shared) / (float)C;
        float sq = 0.0f;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            const float d = load(x + i) - mu;
            sq += d * d;
        }
        const float var = block_sum(sq, shared) / (float)C;
        const float rs = 1.0f / sqrtf(var + CONVOY_LAYERNORM_EPS);
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            store(o + i, (load(x + i) - mu) * rs * weight[i] + bias[i]);
        }
        if (threadIdx.x == 0) {
            mean[row] = mu;
            rstd[row] = rs;
        }
    }
}

// dinp [N, C] += rstd*(dnorm - mean(dnorm) - norm*mean(dnorm*norm)) per row, with
// dnorm = weight*dout and norm = (inp - mean)*rstd, from the forward's saved mean and rstd.
template <typename T>
__device__ void layernorm_backward_dinp_t(float* dinp, const float* dout, const T* inp,
                                          const float* weight, const float* mean,
                                          const float* rstd, int N, int C) {
    __shared__ float shared[32];
    for (int row = blockIdx.x; row < N; row += gridDim.x) {
        const long long off = (long long)row * C;
        const float* g = dout + off;
        const T* x = inp + off;
        float* di = dinp + off;
        const float mu = mean[row], s = rstd[row];
        float a = 0.0f, b = 0.0f;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            const float dn = weight[i] * g[i];
            a += dn;
            b += dn * (load(x + i) - mu);
        }
        const float sum_dnorm = block_sum(a, shared);
        const float sum_dnorm_dev = block_sum(b, shared);
        const float dnorm_mean = sum_dnorm / (float)C;
        const float dnorm_norm_mean = sum_dnorm_dev * s / (float)C;
        for (int i = threadIdx.x; i < C; i += blockDim.x) {
            const float norm = (load(x + i) - mu) * s;
            di[i] += (weight[i] * g[i] - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
}

// partial_dweight [R, C] row r = sum norm*dout, partial_dbias [R, C] row r = sum dout, over
// the rows r*rows_per_block .. min(N, (r+1)*rows_per_block) in order,
// R = ceil(N / rows_per_block).
// Overwrites both scratch buffers.
template <typename T>
__device__ void layernorm_backward_dparams_partial_t(float* partial_dweight,
                                                     float* partial_dbias, const float* dout,
                                                     const T* inp, const float* mean,
                                                     const float* rstd, int N, int C,
                                                     int rows_per_block) {
    const int R = (N + rows_per_block - 1) / rows_per_block;
    for (int r = blockIdx.x; r < R; r += gridDim.x) {
        const int row0 = r * rows_per_block;
        const int row1 = min(N, row0 + rows_per_block);
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float dw = 0.0f, db = 0.0f;
            for (int row = row0; row < row1; row++) {
                const long long i = (long long)row * C + c;
                const float g = dout[i];
                dw += (load(inp + i) - mean[row]) * rstd[row] * g;
                db += g;
            }
            partial_dweight[(long long)r * C + c] = dw;
            partial_dbias[(long long)r * C + c] = db;
        }
    }
}

// The instances: fp32 activations, and bf16 ones (`_bf16`); gradients, weights and the saved
// statistics are fp32 in both.
#define LAYERNORM(SUFFIX, T)                                                                \
    extern "C" __global__ void layernorm_forward##SUFFIX(                                   \
        T* out,               /* [N, C] */                                                  \
        float* mean,          /* [N] */                                                     \
        float* rstd,          /* [N] */                                                     \
        const T* inp,         /* [N, C] */                                                  \
        const float* weight,  /* [C] */                                                     \
        const float* bias,    /* [C] */                                                     \
        int N, int C) {                                                                     \
        layernorm_forward_t(out, mean, rstd, inp, weight, bias, N, C);                      \
    }                                                                                       \
    extern "C" __global__ void layernorm_backward_dinp##SUFFIX(                             \
        float* dinp,          /* [N, C] */                                                  \
        const float* dout,    /* [N, C] */                                                  \
        const T* inp,         /* [N, C] */                                                  \
        const float* weight,  /* [C] */                                                     \
        const float* mean,    /* [N] */                                                     \
        const float* rstd,    /* [N] */                                                     \
        int N, int C) {                                                                     \
        layernorm_backward_dinp_t(dinp, dout, inp, weight, mean, rstd, N, C);               \
    }                                                                                       \
    extern "C" __global__ void layernorm_backward_dparams_partial##SUFFIX(                  \
        float* partial_dweight,  /* [R, C] */                                               \
        float* partial_dbias,    /* [R, C] */                                               \
        const float* dout,       /* [N, C] */                                               \
        const T* inp,            /* [N, C] */                                               \
        const float* mean,       /* [N] */                                                  \
        const float* rstd,       /* [N] */                                                  \
        int N, int C, int rows_per_block) {                                                 \
        layernorm_backward_dparams_partial_t(partial_dweight, partial_dbias, dout, inp, mean, \
                                             rstd, N, C, rows_per_block);                   \
    }

LAYERNORM(, float)
LAYERNORM(_bf16, bf16)

// dweight [C] += sum_r partial_dweight [R, C] row r, dbias [C] likewise, r in order.
extern "C" __global__ void layernorm_backward_dparams_reduce(
    float* dweight,                 // [C]
    float* dbias,                   // [C]
    const float* partial_dweight,   // [R, C]
    const float* partial_dbias,     // [R, C]
    int R, int C) {
    for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < C; c += gridDim.x * blockDim.x) {
        float dw = dweight[c], db = dbias[c];
        for (int r = 0; r < R; r++) {
            dw += partial_dweight[(long long)r * C + c];
            db += partial_dbias[(long long)r * C + c];
        }
        dweight[c] = dw;
        dbias[c] = db;
    }
}
