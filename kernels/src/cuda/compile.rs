//! NVRTC compilation of the embedded sources (or of a folder's copies of them, see
//! [`CompileSettings::source_dir`]), with an on-disk cache.
//!
//! Sources are compiled to PTX for a *virtual* architecture (`compute_80`, `compute_90`): the
//! driver JIT-compiles PTX for the exact GPU, and newer GPUs run older PTX. The PTX ISA version
//! NVRTC emits is what sets the minimum driver, which is why CI pins NVRTC 12.4 (PTX ISA 8.4,
//! loadable by drivers from R550 on).

use std::path::{Path, PathBuf};

use cudarc::nvrtc::{CompileError, CompileOptions, compile_ptx_with_opts};
use xxhash_rust::xxh3::xxh3_64;

use super::error::CudaError;
use super::source::Source;

/// Helpers every source may use (block reductions, bf16 conversions); prepended to each file.
const COMMON: &str = include_str!("../../cuda/common.cuh");

/// A compute capability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Arch {
    pub major: u32,
    pub minor: u32,
}

impl Arch {
    /// A100.
    pub const SM80: Arch = Arch { major: 8, minor: 0 };
    /// H100.
    pub const SM90: Arch = Arch { major: 9, minor: 0 };

    fn virtual_name(self) -> String {
        format!("compute_{}{}", self.major, self.minor)
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sm_{}{}", self.major, self.minor)
    }
}

/// Where NVRTC finds the CUDA headers, where compiled PTX is kept, and which kernel text is
/// compiled.
#[derive(Clone, Debug, Default)]
pub struct CompileSettings {
    pub include_paths: Vec<String>,
    /// `None`: no disk cache.
    pub cache_dir: Option<PathBuf>,
    /// `Some(dir)`: compile `dir/<file>.cu` and `dir/common.cuh` as they are on disk when
    /// [`compile`] runs, instead of the text embedded at build time. `None` (the default): the
    /// embedded text.
    pub source_dir: Option<PathBuf>,
}

impl CompileSettings {
    /// Headers from `CONVOY_CUDA_INCLUDE`, else a CUDA toolkit under `/usr/local/cuda`, else
    /// the `nvidia-cuda-runtime-cu12` wheel beside an `nvidia/cuda_nvrtc/lib` folder on
    /// `LD_LIBRARY_PATH`. Cache in `CONVOY_KERNEL_CACHE`, else `$XDG_CACHE_HOME/convoy/kernels`,
    /// else `~/.cache/convoy/kernels`.
    ///
    /// Kernel sources from the folder `CONVOY_KERNEL_SOURCE_DIR` names, laid out like
    /// `kernels/cuda/` (every `<family>.cu` and `common.cuh`), when it is set and not empty;
    /// else the text embedded at build time. It is for kernel development (edit a `.cu` file,
    /// point the variable at `kernels/cuda` and rerun a test: no rebuild) and for
    /// `emu/mutants.sh`, which compiles deliberately broken copies. The cache key is the full
    /// text, so an edited kernel is compiled anew and never served a stale PTX.
    pub fn from_env() -> CompileSettings {
        let mut include_paths = Vec::new();
        if let Some(dir) = std::env::var_os("CONVOY_CUDA_INCLUDE") {
            include_paths.push(PathBuf::from(dir));
        } else if Path::new("/usr/local/cuda/include/cuda_bf16.h").exists() {
            include_paths.push(PathBuf::from("/usr/local/cuda/include"));
        } else if let Some(paths) = std::env::var_os("LD_LIBRARY_PATH") {
            for lib in std::env::split_paths(&paths) {
                // .../nvidia/cuda_nvrtc/lib → .../nvidia/cuda_runtime/include
                if let Some(nvidia) = lib.parent().and_then(Path::parent) {
                    let inc = nvidia.join("cuda_runtime/include");
                    if inc.join("cuda_bf16.h").exists() {
                        include_paths.push(inc);
                        break;
                    }
                }
            }
        }
        let cache_dir = std::env::var_os("CONVOY_KERNEL_CACHE")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("convoy/kernels"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|d| PathBuf::from(d).join(".cache/convoy/kernels"))
            });
        let source_dir = std::env::var_os("CONVOY_KERNEL_SOURCE_DIR")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from);
        CompileSettings {
            include_paths: include_paths
                .into_iter()
                .map(|p| p.display().to_string())
                .collect(),
            cache_dir,
            source_dir,
        }
    }
}

/// PTX for one source and architecture.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub ptx: String,
    /// Read from the disk cache rather than compiled now.
    pub from_cache: bool,
}

/// Whether libnvrtc can be loaded in this process.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen the library; no NVRTC function is called.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

fn nvrtc_version() -> (i32, i32) {
    let (mut major, mut minor) = (0, 0);
    // SAFETY: nvrtcVersion writes two ints through valid pointers; the library is loaded
    // (callers check `nvrtc_available` first).
    unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    (major, minor)
}

/// The text NVRTC compiles: the shared helpers, then the file with its own line numbers (so
/// the NVRTC log points into `layernorm.cu`, not into the concatenation). From `source_dir`
/// when set, named by their paths there, so that the log points at the copy that was compiled.
fn full_text(src: &Source, source_dir: Option<&Path>) -> Result<String, CudaError> {
    let Some(dir) = source_dir else {
        return Ok(join_text("common.cuh", COMMON, src.file, src.code));
    };
    let read = |path: PathBuf| match std::fs::read_to_string(&path) {
        Ok(text) => Ok((path.display().to_string(), text)),
        Err(source) => Err(CudaError::Source { path, source }),
    };
    let (common_name, common) = read(dir.join("common.cuh"))?;
    let (file_name, code) = read(dir.join(src.file))?;
    Ok(join_text(&common_name, &common, &file_name, &code))
}

fn join_text(common_name: &str, common: &str, file_name: &str, code: &str) -> String {
    format!(
        "#line 1 \"{}\"\n{common}\n#line 1 \"{}\"\n{code}",
        line_name(common_name),
        line_name(file_name)
    )
}

/// `name` as the string literal of a `#line` directive (a path may hold `\` or `"`).
fn line_name(name: &str) -> String {
    name.replace('\\', "\\\\").replace('"', "\\\"")
}

/// Compiles `src` for `arch`, or reads the PTX a previous compile of the same text, options and
/// NVRTC version left in the cache.
pub fn compile(
    src: &Source,
    arch: Arch,
    settings: &CompileSettings,
) -> Result<Compiled, CudaError> {
    // Read first: a wrong source folder is reported even where NVRTC is missing too.
    let text = full_text(src, settings.source_dir.as_deref())?;
    if !nvrtc_available() {
        return Err(CudaError::NoNvrtc);
    }
    let mut options = vec![
        format!("--gpu-architecture={}", arch.virtual_name()),
        "--std=c++17".to_string(),
        // IEEE division and square roots, no flush-to-zero: the GPU suite compares with the
        // CPU reference at 1e-5.
        "--prec-div=true".to_string(),
        "--prec-sqrt=true".to_string(),
        "--ftz=false".to_string(),
    ];
    options.extend(
        settings
            .include_paths
            .iter()
            .map(|p| format!("--include-path={p}")),
    );
    let (major, minor) = nvrtc_version();
    let key = xxh3_64(format!("{text}\0{}\0nvrtc {major}.{minor}", options.join(" ")).as_bytes());
    let cached = settings
        .cache_dir
        .as_ref()
        .map(|d| d.join(format!("{}-{arch}-{key:016x}.ptx", src.name)));
    if let Some(path) = &cached
        && let Ok(ptx) = std::fs::read_to_string(path)
        && ptx.contains(".entry")
    {
        return Ok(Compiled {
            ptx,
            from_cache: true,
        });
    }
    let opts = CompileOptions {
        options,
        name: Some(src.file.to_string()),
        ..Default::default()
    };
    let ptx = compile_ptx_with_opts(&text, opts)
        .map_err(|e| CudaError::Compile {
            file: src.file,
            arch: arch.to_string(),
            log: match e {
                CompileError::CompileError { log, .. } => log.to_string_lossy().into_owned(),
                other => format!("{other:?}"),
            },
        })?
        .to_src();
    if let Some(path) = cached {
        write_cache(&path, &ptx)?;
    }
    Ok(Compiled {
        ptx,
        from_cache: false,
    })
}

/// Writes through a temporary file and a rename, so a concurrent reader never sees half a file.
fn write_cache(path: &Path, ptx: &str) -> Result<(), CudaError> {
    let err = |source| CudaError::Cache {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, ptx).map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)
}
