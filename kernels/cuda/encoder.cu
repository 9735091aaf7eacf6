// Token + position embedding, GPT-2's input layer (mirrors convoy-kernels' encoder.rs).
//
// Forward: out [B*T, C] = wte[inp[bt]] + wpe[bt % T], one thread per output element.
//
// Backward, deterministic and free of float atomics, in two kernels that both accumulate:
//   - encoder_backward_wpe: one thread per (t, c) of dwpe, adding the rows of dout over b in
//     order, exactly as the CPU loop (bit-identical: the same additions in the same order).
//   - encoder_backward_wte: one block per distinct token, from a bucketing of inp prepared on the
//     host (`TokenBuckets` in kernels/src/cuda/prep.rs):
//       bucket_tokens    [U]      the distinct token ids of inp, ascending;
//       bucket_offsets   [U + 1]  bucket u lists bucket_positions[bucket_offsets[u] ..
//                                 bucket_offsets[u + 1]], bucket_offsets[U] = B*T;
//       bucket_positions [B*T]    flat positions bt = b*T + t, ascending within each bucket.
//     The threads of the block own channels c, c + blockDim.x, ... of the token's row and add the
//     rows of dout in ascending bt order: the CPU's order, so the result is bit-identical too.
//     Rows of dwte whose token does not occur in inp are not touched.
//
// Token ids must be < V (the host checks; the CPU panics). The forward writes NaN for an
// out-of-range id rather than reading outside wte.

// out [B*T, C] = wte [V, C] row inp[bt] + wpe [maxT >= T, C] row (bt % T), stored as T (fp32,
// or bf16 for `encoder_forward_bf16`). Overwrites out. Any 1-D grid (grid-stride loop).
template <typename T>
__device__ void encoder_forward_t(T* out, const unsigned* inp, const float* wte,
                                  const float* wpe, int B, int Tn, int C, int V) {
    const long long n = (long long)B * Tn * C;
    CONVOY_FOR_EACH(i, n) {
        const long long bt = i / C;
        const int c = (int)(i % C);
        const int t = (int)(bt % Tn);
        const unsigned tok = inp[bt];
        store(out + i, tok < (unsigned)V ? wte[(long long)tok * C + c] + wpe[(long long)t * C + c]
                                         : __int_as_float(0x7fc00000));  // NaN
    }
}

#define ENCODER_FORWARD(NAME, OUT_T)                                                        \
    extern "C" __global__ void NAME(OUT_T* out,          /* [B*T, C] */                     \
                                    const unsigned* inp, /* [B*T] token ids */              \
                                    const float* wte,    /* [V, C] */                       \
                                    const float* wpe,    /* [maxT, C] */                    \
                                    int B, int T, int C, int V) {                           \
        encoder_forward_t(out, inp, wte, wpe, B, T, C, V);                                  \
    }

ENCODER_FORWARD(encoder_forward, float)
ENCODER_FORWARD(encoder_forward_bf16, bf16)

// dwpe [maxT, C] rows 0..T += sum_b dout [B*T, C] row (b*T + t), b in order. Rows T.. of dwpe are
// not touched. Any 1-D grid (grid-stride loop over the T*C entries).
extern "C" __global__ void encoder_backward_wpe(
    float* dwpe,             // [maxT, C]
    const float* dout,       // [B*T, C]
    int B, int T, int C) {
    const long long n = (long long)T * C;
    const long long stride = (long long)gridDim.x * blockDim.x;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        float acc = dwpe[i];
        for (int b = 0; b < B; b++) acc += dout[(long long)b * T * C + i];
        dwpe[i] = acc;
    }
}

// dwte [V, C] row bucket_tokens[u] += sum dout [B*T, C] row bt over the bucket's positions, in
// ascending bt. One block per bucket (grid-stride over buckets: any grid works), any block size.
extern "C" __global__ void encoder_backward_wte(
    float* dwte,                      // [V, C]
    const float* dout,                // [B*T, C]
    const unsigned* bucket_tokens,    // [U]
    const unsigned* bucket_offsets,   // [U + 1]
    const unsigned* bucket_positions, // [B*T]
    int U, int C) {
    for (int u = blockIdx.x; u < U; u += gridDim.x) {
        float* row = dwte + (long long)bucket_tokens[u] * C;
        const unsigned start = bucket_offsets[u], end = bucket_offsets[u + 1];
        for (int c = threadIdx.x; c < C; c += blockDim.x) {
            float acc = row[c];
            for (unsigned i = start; i < end; i++) {
                acc += dout[(long long)bucket_positions[i] * C + c];
            }
            row[c] = acc;
        }
    }
}
