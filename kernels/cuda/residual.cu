// Residual connection: out = a + b, elementwise.
// Backward is the identity into both inputs; the engine accumulates the upstream gradient
// into both with `residual_backward`.

extern "C" __global__ void residual_forward(
    float* out,        // [N]
    const float* a,    // [N]
    const float* b,    // [N]
    long long n) {
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = a[i] + b[i];
}

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
