// Optimizer steps, in place and elementwise (mirrors convoy-kernels' optim.rs). One thread per
// element in a grid-stride loop: any 1-D grid works.
//
// Parameter groups: like the CPU (engine/src/optim.rs calls adamw_update / sgd_update once per
// group with that group's weight decay), the host launches once per group on the group's range
// of the flat params / grads / state buffers, passing that group's weight decay.

#define CONVOY_FOR_EACH(i, n)                                                       \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); \
         i += (long long)gridDim.x * blockDim.x)

// One AdamW step (decoupled weight decay, torch.optim.AdamW):
//   m = beta1*m + (1-beta1)*g;  v = beta2*v + (1-beta2)*g^2;
//   p = p*decay - step_size*(m / (sqrt(v)/bc2_sqrt + eps))
// The scalars are computed on the host in f64 exactly as the CPU does (`AdamwScalars::new` in
// kernels/src/cuda/prep.rs, from lr, beta1, beta2, eps, the group's weight decay and the
// 1-based step t): step_size = lr/(1-beta1^t), bc2_sqrt = sqrt(1-beta2^t), decay = 1 - lr*wd,
// one_minus_beta1/2 = 1-beta1/2 rounded from f64.
extern "C" __global__ void adamw_update(
    float* params,          // [n]
    const float* grads,     // [n]
    float* m,               // [n] first moments
    float* v,               // [n] second moments
    long long n,
    float beta1, float beta2,
    float one_minus_beta1, float one_minus_beta2,
    float eps,
    float step_size, float bc2_sqrt, float decay) {
    CONVOY_FOR_EACH(i, n) {
        const float g = grads[i];
        const float mi = beta1 * m[i] + one_minus_beta1 * g;
        const float vi = beta2 * v[i] + one_minus_beta2 * g * g;
        m[i] = mi;
        v[i] = vi;
        params[i] = params[i] * decay - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

// One SGD step, torch.optim.SGD with dampening 0: g' = g + wd*p;
// buf = first_step ? g' : momentum*buf + g'; step = nesterov ? g' + momentum*buf : buf;
// p -= lr*step. With momentum == 0 it is plain SGD, p -= lr*(g + wd*p), and momentum_buf is
// neither read nor written (it may be NULL). nesterov and first_step are 0 or 1.
extern "C" __global__ void sgd_update(
    float* params,          // [n]
    const float* grads,     // [n]
    float* momentum_buf,    // [n], or NULL when momentum == 0
    long long n,
    float lr, float momentum, float weight_decay,
    int nesterov, int first_step) {
    if (momentum == 0.0f) {
        CONVOY_FOR_EACH(i, n) {
            const float p = params[i];
            params[i] = p - lr * (grads[i] + weight_decay * p);
        }
        return;
    }
    CONVOY_FOR_EACH(i, n) {
        const float p = params[i];
        const float g = grads[i] + weight_decay * p;
        const float b = first_step ? g : momentum * momentum_buf[i] + g;
        momentum_buf[i] = b;
        const float s = nesterov ? g + momentum * b : b;
        params[i] = p - lr * s;
    }
}
