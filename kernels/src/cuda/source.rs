//! The kernel sources, embedded at build time so a binary carries its kernels. A folder of
//! copies can stand in for them at run time (`CONVOY_KERNEL_SOURCE_DIR`, see
//! `CompileSettings::from_env`); `code` is then unused, `file` names the copy to read.

/// One `.cu` file of `kernels/cuda/`.
#[derive(Clone, Copy, Debug)]
pub struct Source {
    /// The op family, e.g. `layernorm`.
    pub name: &'static str,
    /// The file, for error messages and in a source folder (`layernorm.cu`).
    pub file: &'static str,
    pub code: &'static str,
    /// The `extern "C"` kernels it defines, for loading and for the compile test.
    pub kernels: &'static [&'static str],
}

macro_rules! sources {
    ($($name:literal => [$($k:literal),* $(,)?]),* $(,)?) => {
        /// Every op family, in the order the CI compile test reports them.
        pub const SOURCES: &[Source] = &[
            $(Source {
                name: $name,
                file: concat!($name, ".cu"),
                code: include_str!(concat!("../../cuda/", $name, ".cu")),
                kernels: &[$($k),*],
            }),*
        ];
    };
}

sources! {
    "residual" => ["residual_forward", "residual_forward_bf16", "residual_backward"],
    "matmul" => [
        "matmul_forward", "matmul_backward_dinp", "matmul_backward_dweight",
        "matmul_backward_dbias", "gemm_f32_nn", "gemm_f32_nt", "gemm_f32_tn", "gemm_f32_tt",
        "gemm_bf16_nn", "gemm_bf16_nt", "gemm_bf16_tn", "gemm_bf16_tt",
        "gemm_bf16_nn_bf16out", "gemm_bf16_nt_bf16out", "gemm_bf16_tn_bf16out",
        "gemm_bf16_tt_bf16out", "f32_to_bf16", "bf16_to_f32",
    ],
    "encoder" => [
        "encoder_forward", "encoder_forward_bf16", "encoder_backward_wpe",
        "encoder_backward_wte",
    ],
    "layernorm" => [
        "layernorm_forward",
        "layernorm_forward_bf16",
        "layernorm_backward_dinp",
        "layernorm_backward_dinp_bf16",
        "layernorm_backward_dparams_partial",
        "layernorm_backward_dparams_partial_bf16",
        "layernorm_backward_dparams_reduce",
    ],
    "activation" => [
        "gelu_forward", "gelu_forward_bf16", "gelu_backward", "gelu_backward_bf16",
        "relu_forward", "relu_backward", "tanh_forward", "tanh_backward", "sigmoid_forward",
        "sigmoid_backward",
    ],
    "attention" => [
        "attention_softmax_forward",
        "attention_softmax_forward_bf16",
        "attention_softmax_backward",
        "attention_softmax_backward_bf16",
        "flash_attention_backward_delta",
        "flash_attention_forward_hs16",
        "flash_attention_forward_hs32",
        "flash_attention_forward_hs64",
        "flash_attention_backward_dkv_hs16",
        "flash_attention_backward_dkv_hs32",
        "flash_attention_backward_dkv_hs64",
        "flash_attention_backward_dq_hs16",
        "flash_attention_backward_dq_hs32",
        "flash_attention_backward_dq_hs64",
    ],
    "classifier" => [
        "crossentropy_forward_backward", "crossentropy_forward_backward_bf16", "softmax_forward",
    ],
    "optim" => ["adamw_update", "sgd_update"],
    "gradnorm" => ["global_norm_partials", "global_norm_finish", "clip_grads"],
}

/// The source of the op family `name`.
pub fn source(name: &str) -> Option<&'static Source> {
    SOURCES.iter().find(|s| s.name == name)
}
