// Helpers shared by every convoy kernel source (prepended by the loader, not #included).
// Conventions of all files:
//   - buffers are row-major and flat, as in the CPU reference (convoy-kernels);
//   - shapes are written beside every pointer argument, e.g. `out [B*T, C]`;
//   - reductions combine values in a fixed order (no float atomics), so results are
//     deterministic run to run on the same GPU.
#include <cuda_bf16.h>

#define CONVOY_WARP 32

// One thread per element i < n in a grid-stride loop: any 1-D grid works.
#define CONVOY_FOR_EACH(i, n)                                                       \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)

// Activations are stored as float or as bf16 (`precision = "bf16"`); every kernel that reads or
// writes them is a template over the storage type T with one extern "C" instance per type (the
// bf16 one named with a `_bf16` suffix), and computes in fp32 between `load` and `store`.
typedef __nv_bfloat16 bf16;
__device__ __forceinline__ float load(const float* p) { return *p; }
__device__ __forceinline__ float load(const bf16* p) { return __bfloat162float(*p); }
// Rounds to the nearest bf16, ties to even (NaN stays NaN).
__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(bf16* p, float v) { *p = __float2bfloat16_rn(v); }

// Sum over the warp, the same tree for every call: lane 0..31 all get the result.
__device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a block of up to 1024 threads (blockDim.x a multiple of 32); every thread gets the
// result. `shared` holds 32 floats. Deterministic: warps sum in a fixed tree, then warp 0 sums
// the warp partials in a fixed tree.
__device__ __forceinline__ float block_sum(float v, float* shared) {
    const int lane = threadIdx.x % CONVOY_WARP, warp = threadIdx.x / CONVOY_WARP;
    const int warps = blockDim.x / CONVOY_WARP;
    v = warp_sum(v);
    __syncthreads();  // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : 0.0f;
    v = warp_sum(v);
    return v;
}

__device__ __forceinline__ float block_max(float v, float* shared) {
    const int lane = threadIdx.x % CONVOY_WARP, warp = threadIdx.x / CONVOY_WARP;
    const int warps = blockDim.x / CONVOY_WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : __int_as_float(0xff800000);  // -inf
    v = warp_max(v);
    return v;
}
