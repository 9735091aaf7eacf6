//! Registers and spills of every kernel, as ptxas assembles the PTX that NVRTC makes of each
//! `.cu` source for sm_80 and sm_90. A kernel that spills registers to local memory fails the
//! check unless `kernels/cuda/spills.toml` accepts it with a reason; an accepted entry whose
//! kernel spills more than it says, or no longer spills, fails too.
//!
//! Needs NVRTC (as `nvrtc.rs`) and ptxas: `CONVOY_PTXAS` (a path), else `ptxas` on `PATH`, else
//! `/usr/local/cuda/bin/ptxas`. `.ci/run` installs ptxas from PyPI and sets
//! `CONVOY_REQUIRE_PTXAS=1`, so in CI a missing ptxas or NVRTC fails instead of skipping. The
//! table of every kernel is printed:
//!
//!     cargo test -p convoy-kernels --test ptxas -- --nocapture

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use convoy_kernels::cuda::{Arch, CompileSettings, SOURCES, compile, nvrtc_available};
use serde::Deserialize;

const ARCHS: [Arch; 2] = [Arch::SM80, Arch::SM90];
const SPILLS_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/cuda/spills.toml");

/// What `ptxas -v` reports for one function.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Usage {
    function: String,
    /// A kernel (`.entry`), rather than a device function ptxas kept as a call.
    entry: bool,
    /// `None` for a device function: ptxas reports registers per entry only.
    registers: Option<u32>,
    stack: u64,
    spill_stores: u64,
    spill_loads: u64,
}

/// The functions of one `ptxas -v` run (its stderr), in the order ptxas reports them, and its
/// warnings. Every line is one ptxas is known to print; anything else is an error naming the
/// line, as is a known line without the numbers it should carry.
fn parse_ptxas(text: &str) -> Result<(Vec<Usage>, Vec<String>), String> {
    let mut usages: Vec<Usage> = Vec::new();
    let mut warnings = Vec::new();
    // The entry being compiled (its "Used N registers" line comes last), and the function whose
    // properties the next "stack frame" line gives.
    let mut entry: Option<String> = None;
    let mut props: Option<String> = None;
    for (i, raw) in text.lines().enumerate() {
        let at = |what: &str| format!("ptxas output line {}: {what}: {raw:?}", i + 1);
        let line = raw.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with("ptxas warning") {
            warnings.push(line.to_string());
            continue;
        }
        if let Some(info) = line.strip_prefix("ptxas info") {
            let info = info
                .trim_start()
                .strip_prefix(':')
                .map(str::trim)
                .ok_or_else(|| at("expected \"ptxas info : ...\""))?;
            if let Some(rest) = info.strip_prefix("Compiling entry function ") {
                let name = quoted(rest).ok_or_else(|| at("expected a quoted function name"))?;
                usages.push(Usage {
                    function: name.to_string(),
                    entry: true,
                    ..Usage::default()
                });
                entry = Some(name.to_string());
            } else if let Some(name) = info.strip_prefix("Function properties for ") {
                let name = name.trim();
                if name.is_empty() {
                    return Err(at("expected a function name"));
                }
                if !usages.iter().any(|u| u.function == name) {
                    usages.push(Usage {
                        function: name.to_string(),
                        ..Usage::default()
                    });
                }
                props = Some(name.to_string());
            } else if let Some(rest) = info.strip_prefix("Used ") {
                let n = rest
                    .split_once(" registers")
                    .and_then(|(n, _)| n.trim().parse::<u32>().ok())
                    .ok_or_else(|| at("expected \"Used N registers\""))?;
                let name = entry.take().ok_or_else(|| {
                    at("a register count before any \"Compiling entry function\"")
                })?;
                let usage = usages
                    .iter_mut()
                    .find(|u| u.function == name)
                    .ok_or_else(|| at("a register count for an unknown entry"))?;
                usage.registers = Some(n);
            } else if info
                .split_once(" bytes gmem")
                .is_some_and(|(n, _)| n.parse::<u64>().is_ok())
            {
                // The module's global (and constant) memory, e.g. "0 bytes gmem" or "8 bytes
                // gmem, 16 bytes cmem[4]": nothing per kernel.
            } else {
                return Err(at("unexpected ptxas info"));
            }
            continue;
        }
        if line.contains("bytes stack frame") {
            // "N bytes stack frame, N bytes spill stores, N bytes spill loads"
            let mut fields = line.split(',').map(str::trim);
            let mut number = |suffix: &str| {
                fields
                    .next()
                    .and_then(|f| f.strip_suffix(suffix))
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .ok_or_else(|| at(&format!("expected \"N{suffix}\"")))
            };
            let stack = number(" bytes stack frame")?;
            let spill_stores = number(" bytes spill stores")?;
            let spill_loads = number(" bytes spill loads")?;
            let name = props
                .take()
                .ok_or_else(|| at("a stack frame before any \"Function properties for\""))?;
            let usage = usages
                .iter_mut()
                .find(|u| u.function == name)
                .ok_or_else(|| at("a stack frame for an unknown function"))?;
            usage.stack = stack;
            usage.spill_stores = spill_stores;
            usage.spill_loads = spill_loads;
            continue;
        }
        return Err(at("unexpected text"));
    }
    if let Some(name) = entry {
        return Err(format!("ptxas output: no register count for entry {name}"));
    }
    Ok((usages, warnings))
}

/// `'name' for 'sm_80'` → `name`.
fn quoted(s: &str) -> Option<&str> {
    let rest = s.strip_prefix('\'')?;
    let (name, _) = rest.split_once('\'')?;
    (!name.is_empty()).then_some(name)
}

/// One `[[accept]]` of `kernels/cuda/spills.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Accepted {
    kernel: String,
    arch: String,
    max_store_bytes: u64,
    max_load_bytes: u64,
    reason: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpillsFile {
    #[serde(default)]
    accept: Vec<Accepted>,
}

/// The accepted spills by (kernel, arch); an entry without a reason, for another architecture,
/// or twice, is an error.
fn parse_spills(text: &str) -> Result<BTreeMap<(String, String), Accepted>, String> {
    let file: SpillsFile = toml::from_str(text).map_err(|e| format!("{SPILLS_FILE}: {e}"))?;
    let mut accepted = BTreeMap::new();
    for a in file.accept {
        let what = format!("{SPILLS_FILE}: entry {} ({})", a.kernel, a.arch);
        if !ARCHS.iter().any(|arch| arch.to_string() == a.arch) {
            return Err(format!("{what}: arch is sm_80 or sm_90"));
        }
        if a.reason.trim().is_empty() {
            return Err(format!("{what}: no reason"));
        }
        if a.max_store_bytes == 0 && a.max_load_bytes == 0 {
            return Err(format!("{what}: accepts no spill bytes"));
        }
        if let Some(old) = accepted.insert((a.kernel.clone(), a.arch.clone()), a) {
            return Err(format!(
                "{SPILLS_FILE}: {} ({}) listed twice",
                old.kernel, old.arch
            ));
        }
    }
    Ok(accepted)
}

/// The spill rules: the problems, one line each (empty: the check passes).
fn judge(
    usages: &[(String, Usage)],
    accepted: &BTreeMap<(String, String), Accepted>,
) -> Vec<String> {
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (arch, u) in usages {
        let key = (u.function.clone(), arch.clone());
        let spills = u.spill_stores > 0 || u.spill_loads > 0;
        let what = format!(
            "{} ({arch}): {} bytes spill stores, {} bytes spill loads",
            u.function, u.spill_stores, u.spill_loads
        );
        match accepted.get(&key) {
            None if spills => problems.push(format!(
                "{what}: not accepted in kernels/cuda/spills.toml (remove the spill, or accept \
                 it there with a reason)"
            )),
            None => {}
            Some(_) if !spills => problems.push(format!(
                "{} ({arch}) no longer spills: remove its entry from kernels/cuda/spills.toml",
                u.function
            )),
            Some(a) if u.spill_stores > a.max_store_bytes || u.spill_loads > a.max_load_bytes => {
                problems.push(format!(
                    "{what}: more than the {} / {} bytes kernels/cuda/spills.toml accepts",
                    a.max_store_bytes, a.max_load_bytes
                ))
            }
            Some(_) => {}
        }
        seen.insert(key);
    }
    for (kernel, arch) in accepted.keys() {
        if !seen.contains(&(kernel.clone(), arch.clone())) {
            problems.push(format!(
                "kernels/cuda/spills.toml accepts {kernel} ({arch}), which ptxas did not report"
            ));
        }
    }
    problems
}

/// `CONVOY_PTXAS`, else `ptxas` on `PATH`, else the CUDA toolkit's.
fn find_ptxas() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("CONVOY_PTXAS") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "CONVOY_PTXAS is {} but there is no such file",
            p.display()
        );
        return Some(p);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("ptxas"))
        .find(|p| p.is_file());
    on_path.or_else(|| {
        let p = PathBuf::from("/usr/local/cuda/bin/ptxas");
        p.is_file().then_some(p)
    })
}

/// ptxas and NVRTC, or `None` after printing why the check is skipped; with
/// `CONVOY_REQUIRE_PTXAS` set, a missing one fails instead.
fn ptxas_or_skip() -> Option<PathBuf> {
    let required = std::env::var_os("CONVOY_REQUIRE_PTXAS").is_some();
    let missing = match find_ptxas() {
        Some(p) if nvrtc_available() => return Some(p),
        Some(_) => "libnvrtc not found (set LD_LIBRARY_PATH; .ci/run installs it)",
        None => {
            "ptxas not found (set CONVOY_PTXAS, or put it on PATH; .ci/run installs it from the \
             nvidia-cuda-nvcc-cu12 wheel)"
        }
    };
    assert!(!required, "CONVOY_REQUIRE_PTXAS is set but {missing}");
    eprintln!("skipped: {missing}");
    None
}

/// Runs `ptxas -v` on `ptx` (written to `dir`) for `arch`: its report, or what went wrong.
fn run_ptxas(
    ptxas: &Path,
    dir: &Path,
    name: &str,
    arch: Arch,
    ptx: &str,
) -> Result<String, String> {
    let input = dir.join(format!("{name}.{arch}.ptx"));
    std::fs::write(&input, ptx).map_err(|e| format!("writing {}: {e}", input.display()))?;
    let out = Command::new(ptxas)
        .arg(format!("-arch={arch}"))
        .arg("-v")
        .arg(&input)
        .arg("-o")
        .arg(dir.join(format!("{name}.{arch}.cubin")))
        .output()
        .map_err(|e| format!("running {}: {e}", ptxas.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Err(format!(
            "{} -arch={arch} {} failed ({}); a ptxas older than the NVRTC that made the PTX \
             rejects its .version:\n{stderr}{}",
            ptxas.display(),
            input.display(),
            out.status,
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    Ok(stderr)
}

fn ptxas_version(ptxas: &Path) -> String {
    Command::new(ptxas)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "version unknown".to_string())
}

#[test]
fn no_kernel_spills_registers_unless_accepted() {
    let Some(ptxas) = ptxas_or_skip() else {
        return;
    };
    let accepted = match std::fs::read_to_string(SPILLS_FILE) {
        Ok(text) => parse_spills(&text),
        Err(e) => Err(format!("{SPILLS_FILE}: {e}")),
    }
    .unwrap_or_else(|e| panic!("{e}"));
    let settings = CompileSettings {
        cache_dir: None,
        ..CompileSettings::from_env()
    };
    let dir = std::env::temp_dir().join(format!("convoy-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temporary directory");

    let mut usages: Vec<(String, Usage)> = Vec::new();
    let mut failures = Vec::new();
    for src in SOURCES {
        for arch in ARCHS {
            let report = compile(src, arch, &settings)
                .map_err(|e| e.to_string())
                .and_then(|c| run_ptxas(&ptxas, &dir, src.name, arch, &c.ptx))
                .and_then(|text| {
                    parse_ptxas(&text).map_err(|e| format!("{} ({arch}): {e}", src.file))
                });
            let (found, warnings) = match report {
                Ok(r) => r,
                Err(e) => {
                    failures.push(e);
                    continue;
                }
            };
            for w in warnings {
                println!("{} ({arch}): {w}", src.file);
            }
            for k in src.kernels {
                match found.iter().find(|u| u.function == *k) {
                    Some(u) if u.entry && u.registers.is_some() => {}
                    _ => failures.push(format!(
                        "{} ({arch}): ptxas reported no registers for kernel {k}",
                        src.file
                    )),
                }
            }
            usages.extend(found.into_iter().map(|u| (arch.to_string(), u)));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    // Kernels in the order of SOURCES, each with its architectures together; device functions
    // last.
    let order: Vec<&str> = SOURCES
        .iter()
        .flat_map(|s| s.kernels.iter().copied())
        .collect();
    usages.sort_by_cached_key(|(arch, u)| {
        let rank = order.iter().position(|k| *k == u.function);
        (rank.unwrap_or(usize::MAX), u.function.clone(), arch.clone())
    });

    println!("{} ({})", ptxas.display(), ptxas_version(&ptxas));
    println!(
        "{:<42} {:<6} {:>9} {:>12} {:>11} {:>6}",
        "kernel", "arch", "registers", "spill stores", "spill loads", "stack"
    );
    for (arch, u) in &usages {
        let registers = u.registers.map_or("-".to_string(), |r| r.to_string());
        let note = match accepted.get(&(u.function.clone(), arch.clone())) {
            Some(_) => "  (accepted: kernels/cuda/spills.toml)",
            None if !u.entry => "  (device function)",
            None => "",
        };
        println!(
            "{:<42} {:<6} {:>9} {:>12} {:>11} {:>6}{note}",
            u.function, arch, registers, u.spill_stores, u.spill_loads, u.stack
        );
    }
    failures.extend(judge(&usages, &accepted));
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

// The parser and the rules, on text ptxas 12.4 prints: these run without ptxas.

const SAMPLE: &str = "\
ptxas info    : 8 bytes gmem, 16 bytes cmem[4]
ptxas info    : Compiling entry function 'gemm_f32_nn' for 'sm_80'
ptxas info    : Function properties for gemm_f32_nn
    40 bytes stack frame, 40 bytes spill stores, 44 bytes spill loads
ptxas info    : Used 128 registers, 40 bytes cumulative stack size, 16896 bytes smem, 468 bytes cmem[0], 8 bytes cmem[2]
ptxas info    : Compiling entry function 'bf16_to_f32' for 'sm_90'
ptxas info    : Function properties for bf16_to_f32
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 10 registers
";

fn usage(function: &str, registers: u32, stores: u64, loads: u64) -> Usage {
    Usage {
        function: function.to_string(),
        entry: true,
        registers: Some(registers),
        stack: stores,
        spill_stores: stores,
        spill_loads: loads,
    }
}

#[test]
fn ptxas_reports_parse_per_kernel() {
    let (usages, warnings) = parse_ptxas(SAMPLE).expect("parses");
    assert!(warnings.is_empty());
    assert_eq!(
        usages,
        vec![
            Usage {
                spill_loads: 44,
                ..usage("gemm_f32_nn", 128, 40, 0)
            },
            usage("bf16_to_f32", 10, 0, 0)
        ]
    );

    let with_warning = format!("ptxas warning : Registers are spilled\n{SAMPLE}");
    let (_, warnings) = parse_ptxas(&with_warning).expect("parses");
    assert_eq!(warnings, ["ptxas warning : Registers are spilled"]);
}

#[test]
fn unexpected_ptxas_output_is_an_error_naming_the_line() {
    let cases = [
        (
            SAMPLE.replace("Used 128 registers", "Used many registers"),
            5,
        ),
        (
            SAMPLE.replace("40 bytes spill stores", "forty bytes spill stores"),
            4,
        ),
        (format!("{SAMPLE}something else entirely\n"), 10),
        (
            SAMPLE.replace(
                "ptxas info    : Compiling entry function 'bf16_to_f32' for 'sm_90'\n",
                "",
            ),
            8,
        ),
        (
            "    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n".to_string(),
            1,
        ),
        ("ptxas info    : Something new\n".to_string(), 1),
    ];
    for (text, line) in cases {
        let err = parse_ptxas(&text).expect_err("rejected");
        assert!(err.contains(&format!("line {line}:")), "{err}");
    }
    let unfinished = SAMPLE.lines().take(2).collect::<Vec<_>>().join("\n");
    let err = parse_ptxas(&unfinished).expect_err("rejected");
    assert!(err.contains("gemm_f32_nn"), "{err}");
}

#[test]
fn spills_must_be_accepted_and_accepted_spills_must_be_true() {
    let accepted = parse_spills(
        r#"
        [[accept]]
        kernel = "a"
        arch = "sm_80"
        max_store_bytes = 8
        max_load_bytes = 8
        reason = "measured"
        "#,
    )
    .expect("parses");
    let run = |u: Usage, arch: &str| judge(&[(arch.to_string(), u)], &accepted);

    assert!(run(usage("a", 128, 8, 8), "sm_80").is_empty());
    assert!(run(usage("a", 128, 4, 0), "sm_80").is_empty());
    let missing = run(usage("b", 128, 0, 0), "sm_80");
    assert!(
        missing.len() == 1 && missing[0].contains("did not report"),
        "{missing:?}"
    );
    let more = run(usage("a", 128, 12, 8), "sm_80");
    assert!(more[0].contains("more than"), "{more:?}");
    let gone = run(usage("a", 100, 0, 0), "sm_80");
    assert!(gone[0].contains("no longer spills"), "{gone:?}");
    let other_arch = run(usage("a", 128, 8, 8), "sm_90");
    assert!(other_arch[0].contains("a (sm_90)") && other_arch[0].contains("not accepted"));
    assert!(other_arch[1].contains("did not report"), "{other_arch:?}");

    let entry = |arch: &str, bytes: &str, reason: &str| {
        format!("[[accept]]\nkernel = \"a\"\narch = \"{arch}\"\n{bytes}\n{reason}\n")
    };
    let bytes = "max_store_bytes = 1\nmax_load_bytes = 1";
    for bad in [
        entry("sm_70", bytes, "reason = \"x\""),
        entry("sm_80", bytes, "reason = \" \""),
        entry("sm_80", bytes, ""),
        entry("sm_80", "max_bytes = 1", "reason = \"x\""),
        entry(
            "sm_80",
            "max_store_bytes = 0\nmax_load_bytes = 0",
            "reason = \"x\"",
        ),
    ] {
        assert!(parse_spills(&bad).is_err(), "{bad}");
    }
    assert!(parse_spills(&entry("sm_90", bytes, "reason = \"x\"")).is_ok());
    let twice = entry("sm_80", bytes, "reason = \"x\"");
    let err = parse_spills(&format!("{twice}{twice}")).expect_err("duplicate");
    assert!(err.contains("twice"), "{err}");
}

#[test]
fn the_accepted_spills_file_parses() {
    let text = std::fs::read_to_string(SPILLS_FILE).expect("kernels/cuda/spills.toml");
    let accepted = parse_spills(&text).unwrap_or_else(|e| panic!("{e}"));
    let kernels: BTreeSet<&str> = SOURCES
        .iter()
        .flat_map(|s| s.kernels.iter().copied())
        .collect();
    for (kernel, arch) in accepted.keys() {
        assert!(
            kernels.contains(kernel.as_str()),
            "{SPILLS_FILE}: {kernel} ({arch}) is no kernel of kernels/cuda"
        );
    }
}
