//! Writes the PTX of every kernel source for one architecture, as NVRTC compiles it at run
//! time, for anyone reading what the compiler made of a kernel (`ptxas -arch=sm_80 -v FILE`
//! reports its registers and spills; `tests/ptxas.rs` checks them for every kernel).
//!
//!     cargo run -p convoy-kernels --example ptx_dump -- sm_80 OUT_DIR

use convoy_kernels::cuda::{Arch, CompileSettings, SOURCES, compile};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(arch), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: ptx_dump sm_80|sm_90 OUT_DIR");
        std::process::exit(2);
    };
    let arch = match arch.as_str() {
        "sm_80" => Arch::SM80,
        "sm_90" => Arch::SM90,
        other => {
            eprintln!("ptx_dump: unknown architecture {other} (sm_80 or sm_90)");
            std::process::exit(2);
        }
    };
    let settings = CompileSettings {
        cache_dir: None,
        ..CompileSettings::from_env()
    };
    if let Err(e) = std::fs::create_dir_all(&out) {
        eprintln!("ptx_dump: cannot create {out}: {e}");
        std::process::exit(1);
    }
    for src in SOURCES {
        let path = std::path::Path::new(&out).join(format!("{}.{arch}.ptx", src.name));
        let written = compile(src, arch, &settings)
            .map_err(|e| e.to_string())
            .and_then(|c| std::fs::write(&path, c.ptx).map_err(|e| e.to_string()));
        if let Err(e) = written {
            eprintln!("ptx_dump: {}: {e}", src.file);
            std::process::exit(1);
        }
    }
}
