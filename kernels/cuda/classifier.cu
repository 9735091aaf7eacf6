// The classifier: softmax + cross-entropy + dlogits fused, one block per row (mirrors
// convoy-kernels' loss.rs, crossentropy_forward_backward and softmax_forward).
//
// logits [N, Vp]: the first V columns are real, the padding columns V..Vp are never read (they
// may hold anything, NaN included) and get dlogits = 0 / probs = 0. targets [N] (u32):
// IGNORE_INDEX (0xFFFFFFFF) rows have loss 0 and a zero dlogits row; any other target must be
// < V (the host checks, the CPU panics): an out-of-range one gets a NaN loss and a NaN dlogits
// row rather than a read outside the row.
//
// Launch: one block per row (grid-stride over rows, any grid), blockDim.x a multiple of 32 and
// <= 1024, fixed for reproducible row sums. The total loss (the sum of the losses of the
// non-ignored rows, in f64 and in row order, and their count) is the host's: download
// losses [N] and sum them like the CPU does.

#define CONVOY_IGNORE_INDEX 0xFFFFFFFFu

// losses [N] = logsumexp(row[0..V]) - row[target] per row (0 for ignored rows), overwritten.
// When dlogits is not NULL it is overwritten with (softmax - onehot)*dloss_scale on the real
// columns and 0 on the padding (the gradient of dloss_scale*sum losses). dlogits may be the
// logits buffer itself (in place): each row is read entirely before it is written.
// T is the storage of logits and dlogits: float, or bf16 for crossentropy_forward_backward_bf16
// (dlogits then only feed the LM head's bf16 products).
template <typename T>
__device__ void crossentropy_t(float* losses, T* dlogits, const T* logits,
                               const unsigned* targets, int N, int V, int Vp,
                               float dloss_scale) {
    __shared__ float shared[32];
    for (int r = blockIdx.x; r < N; r += gridDim.x) {
        const T* x = logits + (long long)r * Vp;
        T* d = dlogits ? dlogits + (long long)r * Vp : nullptr;
        const unsigned target = targets[r];
        if (target == CONVOY_IGNORE_INDEX || target >= (unsigned)V) {
            const float fill = target == CONVOY_IGNORE_INDEX ? 0.0f : __int_as_float(0x7fc00000);
            if (d) {
                for (int j = threadIdx.x; j < Vp; j += blockDim.x) store(d + j, fill);
            }
            if (threadIdx.x == 0) losses[r] = fill;
            continue;
        }
        // Read before the barriers inside block_max/block_sum, so before any thread writes d.
        const float xt = load(x + target);
        float m = __int_as_float(0xff800000);  // -inf
        for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, load(x + j));
        m = block_max(m, shared);
        float sum = 0.0f;
        for (int j = threadIdx.x; j < V; j += blockDim.x) sum += expf(load(x + j) - m);
        sum = block_sum(sum, shared);
        if (d) {
            const float f = dloss_scale / sum;
            for (int j = threadIdx.x; j < V; j += blockDim.x) {
                // __fmul_rn keeps the product rounded before the subtraction, as the CPU.
                float g = __fmul_rn(expf(load(x + j) - m), f);
                if (j == (int)target) g -= dloss_scale;
                store(d + j, g);
            }
            for (int j = V + threadIdx.x; j < Vp; j += blockDim.x) store(d + j, 0.0f);
        }
        if (threadIdx.x == 0) losses[r] = logf(sum) - (xt - m);
    }
}

#define CROSSENTROPY(NAME, T)                                                               \
    extern "C" __global__ void NAME(float* losses,           /* [N] */                      \
                                    T* dlogits,              /* [N, Vp], or NULL */         \
                                    const T* logits,         /* [N, Vp] */                  \
                                    const unsigned* targets, /* [N] */                      \
                                    int N, int V, int Vp, float dloss_scale) {              \
        crossentropy_t(losses, dlogits, logits, targets, N, V, Vp, dloss_scale);            \
    }

CROSSENTROPY(crossentropy_forward_backward, float)
CROSSENTROPY(crossentropy_forward_backward_bf16, bf16)

// probs [N, Vp] = softmax of logits [N, Vp] over the first V columns, 0 on the padding.
// Overwrites probs (which may be the logits buffer itself).
extern "C" __global__ void softmax_forward(
    float* probs,               // [N, Vp]
    const float* logits,        // [N, Vp]
    int N, int V, int Vp) {
    __shared__ float shared[32];
    for (int r = blockIdx.x; r < N; r += gridDim.x) {
        const float* x = logits + (long long)r * Vp;
        float* p = probs + (long long)r * Vp;
        float m = __int_as_float(0xff800000);  // -inf
        for (int j = threadIdx.x; j < V; j += blockDim.x) m = fmaxf(m, x[j]);
        m = block_max(m, shared);
        float sum = 0.0f;
        for (int j = threadIdx.x; j < V; j += blockDim.x) sum += expf(x[j] - m);
        const float inv = 1.0f / block_sum(sum, shared);
        for (int j = threadIdx.x; j < V; j += blockDim.x) p[j] = expf(x[j] - m) * inv;
        for (int j = V + threadIdx.x; j < Vp; j += blockDim.x) p[j] = 0.0f;
    }
}
