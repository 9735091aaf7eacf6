// Residual connection: out = a + b, elementwise, for fp32 or bf16 activations (`_bf16`).
// Backward is the identity into both inputs; the engine accumulates the upstream gradient
// into both with `residual_backward` (fp32 gradients).

template <typename T>
__device__ void residual_forward_t(T* out, const T* a, const T* b, long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) store(out + i, load(a + i) + load(b + i));
}

#define RESIDUAL_FORWARD(NAME, T)                                                           \
    extern "C" __global__ void NAME(T* out,     /* [N] */                                   \
                                    const T* a, /* [N] */                                   \
                                    const T* b, /* [N] */                                   \
                                    long long n) {                                          \
        residual_forward_t(out, a, b, n);                                                   \
    }

RESIDUAL_FORWARD(residual_forward, float)
RESIDUAL_FORWARD(residual_forward_bf16, bf16)

// da += dout; db += dout (backward kernels accumulate, like the CPU reference).
extern "C" __global__ void residual_backward(
    float* da,          // [N]
    float* db,          // [N]
    const float* dout,  // [N]
    long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        da[i] += dout[i];
        db[i] += dout[i];
    }
}
