// Elementwise activations (mirrors convoy-kernels' activation.rs): GELU (tanh approximation),
// ReLU, tanh, sigmoid. Every kernel takes buffers of n elements, one thread per element in a
// grid-stride loop (any 1-D grid works); backward kernels accumulate into dinp. GELU, the GPT's
// activation, also comes with bf16 activations (`_bf16`, common.cuh); the others are fp32.
// tanhf and expf are the IEEE-accurate library functions (a few ulp), not the fast intrinsics.

#define GELU_SCALE 0.7978846f  // sqrt(2/pi)
#define GELU_CUBE 0.044715f

// out = 0.5*x*(1 + tanh(sqrt(2/pi)*(x + 0.044715*x^3))).
template <typename T>
__device__ void gelu_forward_t(T* out, const T* inp, long long n) {
    CONVOY_FOR_EACH(i, n) {
        const float x = load(inp + i);
        const float t = tanhf(GELU_SCALE * (x + GELU_CUBE * x * x * x));
        store(out + i, 0.5f * x * (1.0f + t));
    }
}

// dinp += gelu'(inp)*dout, with 1 - tanh^2 for sech^2 as the CPU. The gradients are fp32 with
// either storage type of the forward's input.
template <typename T>
__device__ void gelu_backward_t(float* dinp, const T* inp, const float* dout, long long n) {
    CONVOY_FOR_EACH(i, n) {
        const float x = load(inp + i);
        const float x2 = x * x;
        const float t = tanhf(GELU_SCALE * (x + GELU_CUBE * x2 * x));
        const float dt = GELU_SCALE * (1.0f + 3.0f * GELU_CUBE * x2);
        const float local = 0.5f * (1.0f + t) + 0.5f * x * (1.0f - t * t) * dt;
        dinp[i] += local * dout[i];
    }
}

#define GELU(SUFFIX, T)                                                                     \
    extern "C" __global__ void gelu_forward##SUFFIX(                                        \
        T* out,           /* [n] */                                                         \
        const T* inp,     /* [n] */                                                         \
        long long n) {                                                                      \
        gelu_forward_t(out, inp, n);                                                        \
    }                                                                                       \
    extern "C" __global__ void gelu_backward##SUFFIX(                                       \
        float* dinp,       /* [n] */                                                        \
        const T* inp,      /* [n] */                                                        \
        const float* dout, /* [n] */                                                        \
        long long n) {                                                                      \
        gelu_backward_t(dinp, inp, dout, n);                                                \
    }

GELU(, float)
GELU(_bf16, bf16)

// out = max(inp, 0), NaN stays NaN.
extern "C" __global__ void relu_forward(
    float* out,          // [n]
    const float* inp,    // [n]
    long long n) {
    CONVOY_FOR_EACH(i, n) {
        const float x = inp[i];
        out[i] = x < 0.0f ? 0.0f : x;
    }
}

// dinp += (inp > 0)*dout (the subgradient at 0 is 0).
extern "C" __global__ void relu_backward(
    float* dinp,         // [n]
    const float* inp,    // [n]
    const float* dout,   // [n]
    long long n) {
    CONVOY_FOR_EACH(i, n) {
        dinp[i] += inp[i] > 0.0f ? dout[i] : 0.0f;
    }
}

// out = tanh(inp).
extern "C" __global__ void tanh_forward(
    float* out,          // [n]
    const float* inp,    // [n]
    long long n) {
    CONVOY_FOR_EACH(i, n) {
        out[i] = tanhf(inp[i]);
    }
}

// dinp += (1 - out^2)*dout, from the forward's output.
extern "C" __global__ void tanh_backward(
    float* dinp,         // [n]
    const float* out,    // [n] the forward's output
    const float* dout,   // [n]
    long long n) {
    CONVOY_FOR_EACH(i, n) {
        const float y = out[i];
        dinp[i] += (1.0f - y * y) * dout[i];
    }
}

// out = 1 / (1 + exp(-inp)).
extern "C" __global__ void sigmoid_forward(
    float* out,          // [n]
    const float* inp,    // [n]
    long long n) {
    CONVOY_FOR_EACH(i, n) {
        out[i] = 1.0f / (1.0f + expf(-inp[i]));
    }
}

// dinp += out*(1 - out)*dout, from the forward's output.
extern "C" __global__ void sigmoid_backward(
    float* dinp,         // [n]
    const float* out,    // [n] the forward's output
    const float* dout,   // [n]
    long long n) {
    CONVOY_FOR_EACH(i, n) {
        const float y = out[i];
        dinp[i] += y * (1.0f - y) * dout[i];
    }
}
