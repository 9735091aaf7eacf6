// Global gradient norm and clipping, torch.nn.utils.clip_grad_norm_ (mirrors convoy-kernels'
// gradnorm.rs). Squares are summed in f64, like the CPU, in a deterministic two-pass reduction:
//   1. global_norm_partials: block b sums the squares of its chunk of GRADNORM_CHUNK elements
//      (grads[b*CHUNK .. min(n, (b+1)*CHUNK)]) into partials[b]: P = ceil(n / GRADNORM_CHUNK)
//      chunks (grid-stride over chunks, so any grid works), blockDim.x a multiple of 32, <= 1024.
//   2. global_norm_finish: ONE block sums partials [P] in a fixed order and writes
//      norm[0] = sqrt(total) as f32.
// The sums depend only on n and blockDim.x (keep it fixed), not on the grid or the GPU.
// clip_grads then scales the gradients on the device, reading the norm from device memory, so
// the step needs no host round trip.

// Elements per partial sum; must equal convoy_kernels::cuda::prep::GRADNORM_CHUNK (a unit test
// checks).
#define GRADNORM_CHUNK 16384

// Sum over the block in f64, a fixed tree (as block_sum in common.cuh); every thread gets the
// result. `shared` holds 32 doubles.
__device__ __forceinline__ double block_sum_f64(double v, double* shared) {
    const int lane = threadIdx.x % CONVOY_WARP, warp = threadIdx.x / CONVOY_WARP;
    const int warps = blockDim.x / CONVOY_WARP;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// partials [P] = sum g^2 over each chunk of GRADNORM_CHUNK elements of grads [n], in f64.
extern "C" __global__ void global_norm_partials(
    double* partials,      // [P = ceil(n / GRADNORM_CHUNK)]
    const float* grads,    // [n]
    long long n) {
    __shared__ double shared[32];
    const long long chunks = (n + GRADNORM_CHUNK - 1) / GRADNORM_CHUNK;
    for (long long b = blockIdx.x; b < chunks; b += gridDim.x) {
        const long long start = b * GRADNORM_CHUNK;
        const long long end = min(n, start + GRADNORM_CHUNK);
        double acc = 0.0;
        for (long long i = start + threadIdx.x; i < end; i += blockDim.x) {
            const double g = (double)grads[i];
            acc += g * g;
        }
        acc = block_sum_f64(acc, shared);
        if (threadIdx.x == 0) partials[b] = acc;
    }
}

// norm [1] = sqrt(sum partials [P]) as f32 (0 for P = 0). Launch with ONE block.
extern "C" __global__ void global_norm_finish(
    float* norm,              // [1]
    const double* partials,   // [P]
    long long P) {
    __shared__ double shared[32];
    double acc = 0.0;
    for (long long i = threadIdx.x; i < P; i += blockDim.x) acc += partials[i];
    acc = block_sum_f64(acc, shared);
    if (threadIdx.x == 0) norm[0] = (float)sqrt(acc);
}

// grads [n] *= max_norm / (norm[0] + 1e-6) when that scale is below 1 (a NaN norm clips
// nothing), as the CPU's clip_grads. norm is the device value from global_norm_finish (or one
// the host uploaded, e.g. combined across workers). Any 1-D grid (grid-stride).
extern "C" __global__ void clip_grads(
    float* grads,             // [n]
    long long n,
    const float* norm,        // [1]
    float max_norm) {
    const float scale = max_norm / (norm[0] + 1e-6f);
    if (!(scale < 1.0f)) return;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long long)gridDim.x * blockDim.x) {
        grads[i] *= scale;
    }
}
