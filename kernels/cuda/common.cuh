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

// ---- tensor cores (sm_80+): bf16 mma.sync, for matmul.cu and attention.cu ----

// Two bf16 from shared memory as one .b32 mma operand register, the first in the low half.
__device__ __forceinline__ unsigned hg_pair(const unsigned short* s) {
    return *reinterpret_cast<const unsigned*>(s);
}
__device__ __forceinline__ unsigned hg_pack(unsigned short lo, unsigned short hi) {
    return (unsigned)lo | (unsigned)hi << 16;
}

// d += a·b on a 16×8×16 tile (PTX ISA "Matrix Fragments for mma.m16n8k16"), lane = 4g + t:
//   a[0] = A(g, 2t..2t+1), a[1] = A(g+8, 2t..), a[2] = A(g, 2t+8..), a[3] = A(g+8, 2t+8..);
//   b[0] = B(2t..2t+1, g), b[1] = B(2t+8..2t+9, g);
//   d[0..1] = D(g, 2t..2t+1), d[2..3] = D(g+8, 2t..2t+1).
__device__ __forceinline__ void mma_bf16_16816(float (&d)[4], const unsigned (&a)[4],
                                               const unsigned (&b)[2]) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}
