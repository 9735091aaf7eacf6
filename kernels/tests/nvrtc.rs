//! Every `.cu` source compiles with NVRTC for sm_80 and sm_90, and defines the kernels the
//! loader expects. Needs libnvrtc on `LD_LIBRARY_PATH` (and the CUDA headers, see
//! `CompileSettings::from_env`); `.ci/run` installs both from PyPI and sets
//! `CONVOY_REQUIRE_NVRTC=1`, so in CI a missing NVRTC fails instead of skipping.

use convoy_kernels::cuda::{Arch, CompileSettings, SOURCES, compile, nvrtc_available};

fn nvrtc_or_skip() -> bool {
    if nvrtc_available() {
        return true;
    }
    assert!(
        std::env::var_os("CONVOY_REQUIRE_NVRTC").is_none(),
        "CONVOY_REQUIRE_NVRTC is set but libnvrtc cannot be loaded (LD_LIBRARY_PATH?)"
    );
    eprintln!("skipped: libnvrtc not found (set LD_LIBRARY_PATH; .ci/run installs it)");
    false
}

#[test]
fn every_kernel_source_compiles_for_sm80_and_sm90() {
    if !nvrtc_or_skip() {
        return;
    }
    let settings = CompileSettings {
        cache_dir: None,
        ..CompileSettings::from_env()
    };
    let mut failures = Vec::new();
    for src in SOURCES {
        for arch in [Arch::SM80, Arch::SM90] {
            match compile(src, arch, &settings) {
                Ok(c) => {
                    for k in src.kernels {
                        if !c.ptx.contains(&format!(".entry {k}(")) {
                            failures
                                .push(format!("{} ({arch}): no kernel {k} in the PTX", src.file));
                        }
                    }
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn a_compile_error_names_the_file_and_carries_the_nvrtc_log() {
    if !nvrtc_or_skip() {
        return;
    }
    let broken = convoy_kernels::cuda::Source {
        name: "broken",
        file: "broken.cu",
        code: "extern \"C\" __global__ void k(float* x) { x[0] = undefined_name; }\n",
        kernels: &["k"],
    };
    let err = compile(&broken, Arch::SM80, &CompileSettings::from_env())
        .expect_err("the source does not compile")
        .to_string();
    assert!(err.contains("broken.cu"), "{err}");
    assert!(err.contains("undefined_name"), "{err}");
    assert!(err.contains("sm_80"), "{err}");
}

#[test]
fn compiled_ptx_is_cached_on_disk_and_reused() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("convoy-kernel-cache-{}", std::process::id()));
    let settings = CompileSettings {
        cache_dir: Some(dir.clone()),
        ..CompileSettings::from_env()
    };
    let src = &SOURCES[0];
    let first = compile(src, Arch::SM90, &settings).expect("compile");
    let second = compile(src, Arch::SM90, &settings).expect("cached");
    assert!(!first.from_cache && second.from_cache);
    assert_eq!(first.ptx, second.ptx);
    let _ = std::fs::remove_dir_all(dir);
}

/// A fresh folder for one test's kernel sources (the process id keeps parallel runs apart).
fn source_dir(test: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("convoy-kernel-src-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the source folder");
    dir
}

fn source_of(name: &str) -> &'static convoy_kernels::cuda::Source {
    convoy_kernels::cuda::source(name).expect("an embedded source")
}

const COMMON: &str = include_str!("../cuda/common.cuh");

#[test]
fn a_source_folder_is_compiled_instead_of_the_embedded_text() {
    if !nvrtc_or_skip() {
        return;
    }
    let dir = source_dir("override");
    let src = source_of("residual");
    // A kernel in each file that the embedded text lacks: both files were read from the folder.
    let marker = |name: &str| {
        format!("\nextern \"C\" __global__ void {name}(float* x) {{ x[0] = 1.0f; }}\n")
    };
    std::fs::write(
        dir.join("common.cuh"),
        format!("{COMMON}{}", marker("common_marker")),
    )
    .expect("write");
    std::fs::write(
        dir.join(src.file),
        format!("{}{}", src.code, marker("file_marker")),
    )
    .expect("write");
    let settings = CompileSettings {
        cache_dir: None,
        source_dir: Some(dir.clone()),
        ..CompileSettings::from_env()
    };
    let ptx = compile(src, Arch::SM80, &settings)
        .expect("the copy compiles")
        .ptx;
    for k in src.kernels.iter().chain(&["common_marker", "file_marker"]) {
        assert!(
            ptx.contains(&format!(".entry {k}(")),
            "no kernel {k} in the PTX"
        );
    }

    // A syntax error in the copy is NVRTC's error, pointing at the copy's path and line.
    std::fs::write(
        dir.join(src.file),
        format!("{}\nint broken = ;\n", src.code),
    )
    .expect("write");
    let err = compile(src, Arch::SM80, &settings)
        .expect_err("the broken copy does not compile")
        .to_string();
    let path = dir.join(src.file).display().to_string();
    let line = src.code.lines().count() + 2;
    assert!(err.contains(&format!("{path}({line})")), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_missing_file_of_the_source_folder_is_an_error_naming_its_path() {
    // No NVRTC needed: the sources are read before NVRTC is looked for.
    let dir = source_dir("missing");
    let src = source_of("layernorm");
    let settings = CompileSettings {
        cache_dir: None,
        source_dir: Some(dir.clone()),
        ..CompileSettings::from_env()
    };
    let err = compile(src, Arch::SM80, &settings)
        .expect_err("no common.cuh")
        .to_string();
    assert!(
        err.contains(&dir.join("common.cuh").display().to_string()),
        "{err}"
    );
    assert!(err.contains("CONVOY_KERNEL_SOURCE_DIR"), "{err}");

    std::fs::write(dir.join("common.cuh"), COMMON).expect("write");
    let err = compile(src, Arch::SM80, &settings)
        .expect_err("no layernorm.cu")
        .to_string();
    assert!(
        err.contains(&dir.join("layernorm.cu").display().to_string()),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
