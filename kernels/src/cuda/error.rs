//! What can go wrong between a `.cu` source and a loaded kernel.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// libnvrtc could not be loaded: the process cannot compile kernels.
    #[error(
        "NVRTC is not available (libnvrtc.so.12 not found through LD_LIBRARY_PATH); install the \
         CUDA toolkit or the nvidia-cuda-nvrtc-cu12 wheel and add its lib folder to LD_LIBRARY_PATH"
    )]
    NoNvrtc,
    /// NVRTC rejected a source; the log is NVRTC's own, with file and line numbers.
    #[error("compiling {file} for {arch} failed:\n{log}")]
    Compile {
        file: &'static str,
        arch: String,
        log: String,
    },
    /// A CUDA driver call failed (out of memory, a launch error, a PTX the driver cannot load).
    #[error("CUDA {during}: {msg}")]
    Driver { during: String, msg: String },
    /// The driver is older than the PTX convoy generates can run on.
    #[error(
        "the NVIDIA driver supports CUDA {}.{} but convoy's kernels need CUDA 12.4: update the \
         driver to the R550 series or newer",
        found / 1000,
        found % 1000 / 10
    )]
    OldDriver { found: i32 },
    /// A file of the source folder (`CompileSettings::source_dir`, `CONVOY_KERNEL_SOURCE_DIR`)
    /// could not be read.
    #[error(
        "kernel source {path} (CONVOY_KERNEL_SOURCE_DIR stands in for kernels/cuda/): {source}"
    )]
    Source {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no kernel source named {0:?}")]
    UnknownSource(String),
    /// The on-disk kernel cache could not be written (compiling still worked).
    #[error("kernel cache {path}: {source}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
