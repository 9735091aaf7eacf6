//! PTX text to a module of decoded kernels.
//!
//! Reads what NVRTC emits for convoy's kernels: module-scope and kernel-scope `.shared`
//! arrays, `.entry` kernels with `.param` lists and `.maxntid`, `.reg` declarations, labels and
//! one instruction per line. Anything else is refused with its line, so an unsupported form is
//! an error at load time rather than a wrong value at run time.

mod decode;
pub mod ir;
mod names;

use std::collections::HashMap;
use std::sync::Arc;

use crate::error::EmuError;
use ir::{Inst, Reg, SPECIALS};
pub use names::SHARED_BASE;
use names::{Names, SharedVar};

/// One `.param` of a kernel's signature.
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub size: usize,
    /// Offset in the kernel's parameter buffer.
    pub offset: usize,
}

#[derive(Debug)]
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    /// Bytes of the parameter buffer (params at their natural alignment).
    pub param_bytes: usize,
    pub insts: Vec<Inst>,
    /// The PTX line of each instruction, for fault messages (index = PTX line number − 1).
    pub lines: Arc<Vec<String>>,
    pub regs: usize,
    /// Static shared memory of the kernel, in bytes; dynamic shared memory follows it.
    pub shared_bytes: usize,
    /// `.maxntid`: the most threads a block of this kernel may have.
    pub max_threads: Option<u32>,
}

impl Kernel {
    /// The text of PTX line `line` (1-based).
    pub fn line_text(&self, line: usize) -> &str {
        self.lines
            .get(line.wrapping_sub(1))
            .map_or("", |s| s.trim())
    }
}

#[derive(Debug, Default)]
pub struct Module {
    kernels: Vec<Arc<Kernel>>,
}

impl Module {
    pub fn parse(text: &str) -> Result<Module, EmuError> {
        let lines: Arc<Vec<String>> = Arc::new(text.lines().map(str::to_string).collect());
        let mut module_shared: HashMap<String, SharedVar> = HashMap::new();
        let mut kernels = Vec::new();
        let mut i = 0;
        while i < lines.len() {
            let line = strip_comment(&lines[i]);
            let t = line.trim();
            if t.is_empty()
                || t.starts_with(".version")
                || t.starts_with(".target")
                || t.starts_with(".address_size")
            {
                i += 1;
                continue;
            }
            if t.starts_with(".extern") {
                return Err(err(
                    i,
                    t,
                    "dynamic shared memory (.extern .shared) is not supported",
                ));
            }
            if t.starts_with(".shared") {
                let (name, var) = shared_decl(t).ok_or_else(|| err(i, t, "unreadable .shared"))?;
                module_shared.insert(name, var);
                i += 1;
                continue;
            }
            if t.contains(".entry") {
                let (kernel, next) = parse_kernel(&lines, i, &module_shared)?;
                kernels.push(Arc::new(kernel));
                i = next;
                continue;
            }
            return Err(err(i, t, "unsupported module-level statement"));
        }
        Ok(Module { kernels })
    }

    pub fn kernel(&self, name: &str) -> Result<Arc<Kernel>, EmuError> {
        self.kernels
            .iter()
            .find(|k| k.name == name)
            .cloned()
            .ok_or_else(|| EmuError::NoKernel(name.to_string()))
    }
}

fn err(i: usize, text: &str, msg: &str) -> EmuError {
    EmuError::Ptx {
        line: i + 1,
        text: text.trim().to_string(),
        msg: msg.to_string(),
    }
}

fn strip_comment(line: &str) -> &str {
    line.find("//").map_or(line, |p| &line[..p])
}

/// `.shared .align 16 .b8 NAME[8448];` → (NAME, align 16, 8448 bytes).
fn shared_decl(t: &str) -> Option<(String, SharedVar)> {
    let t = t.trim_end_matches(';');
    let words: Vec<&str> = t.split_whitespace().collect();
    let align = words
        .iter()
        .position(|w| *w == ".align")
        .and_then(|p| words.get(p + 1))
        .and_then(|a| a.parse().ok())
        .unwrap_or(1);
    let elem: usize = words.iter().find_map(|w| type_bytes(w))?;
    let last = words.last()?;
    let (name, count) = match last.find('[') {
        Some(p) => {
            let n = &last[p + 1..last.len().checked_sub(1)?];
            (last[..p].to_string(), n.parse().ok()?)
        }
        None => (last.to_string(), 1),
    };
    Some((
        name,
        SharedVar {
            align,
            size: elem * count,
        },
    ))
}

fn type_bytes(w: &str) -> Option<usize> {
    Some(match w {
        ".b8" | ".u8" | ".s8" => 1,
        ".b16" | ".u16" | ".s16" | ".f16" | ".bf16" => 2,
        ".b32" | ".u32" | ".s32" | ".f32" => 4,
        ".b64" | ".u64" | ".s64" | ".f64" => 8,
        _ => return None,
    })
}

/// Parses the kernel whose `.entry` is on line `start`; returns it and the line after it.
fn parse_kernel(
    lines: &Arc<Vec<String>>,
    start: usize,
    module_shared: &HashMap<String, SharedVar>,
) -> Result<(Kernel, usize), EmuError> {
    let head = strip_comment(&lines[start]).trim();
    let name = head
        .split(".entry")
        .nth(1)
        .map(|s| s.trim().trim_end_matches('(').trim())
        .filter(|s| !s.is_empty())
        .ok_or_else(|| err(start, head, "unreadable .entry"))?
        .to_string();
    let mut params = Vec::new();
    let mut param_bytes = 0usize;
    let mut max_threads = None;
    let mut i = start + 1;
    // Parameters, up to `)`, then performance directives, up to `{`.
    loop {
        let t = strip_comment(
            lines
                .get(i)
                .ok_or_else(|| err(start, head, "unterminated .entry"))?,
        )
        .trim()
        .to_string();
        i += 1;
        if t.starts_with(".param") {
            let words: Vec<&str> = t.trim_end_matches([',', ')']).split_whitespace().collect();
            let size = words
                .iter()
                .find_map(|w| type_bytes(w))
                .ok_or_else(|| err(i - 1, &t, "unsupported .param type"))?;
            let pname = words
                .last()
                .ok_or_else(|| err(i - 1, &t, "unnamed .param"))?
                .to_string();
            if pname.contains('[') || words.contains(&".align") {
                return Err(err(i - 1, &t, "array parameters are not supported"));
            }
            let offset = param_bytes.div_ceil(size) * size;
            param_bytes = offset + size;
            params.push(Param {
                name: pname,
                size,
                offset,
            });
        } else if t.starts_with(".maxntid") {
            let dims: Vec<u32> = t["maxntid".len() + 1..]
                .split(',')
                .map(|d| d.trim().parse().map_err(|_| err(i - 1, &t, "bad .maxntid")))
                .collect::<Result<_, _>>()?;
            max_threads = Some(dims.iter().product());
        } else if t == "{" {
            break;
        } else if t.is_empty()
            || t == ")"
            || t.starts_with(".minnctapersm")
            || t.starts_with(".reqntid")
        {
            // `.reqntid` also bounds the block; .maxntid suffices for convoy's kernels.
        } else {
            return Err(err(i - 1, &t, "unexpected in a kernel's signature"));
        }
    }
    // Body: first pass collects labels (instruction indices) and kernel-scope declarations.
    let mut labels = HashMap::new();
    let mut kernel_shared = HashMap::new();
    let mut body = Vec::new();
    let mut n = 0u32;
    loop {
        let raw = lines
            .get(i)
            .ok_or_else(|| err(start, head, "kernel body has no closing `}`"))?;
        let t = strip_comment(raw).trim();
        i += 1;
        if t == "}" {
            break;
        }
        if t.is_empty() || t.starts_with(".reg") || t.starts_with(".pragma") {
            continue;
        }
        if t.starts_with(".shared") {
            let (sname, var) = shared_decl(t).ok_or_else(|| err(i - 1, t, "unreadable .shared"))?;
            kernel_shared.insert(sname, var);
            continue;
        }
        if t.starts_with(".local") {
            return Err(err(i - 1, t, "local memory (.local) is not supported"));
        }
        if let Some(label) = t.strip_suffix(':') {
            labels.insert(label.to_string(), n);
            continue;
        }
        // `{ cvt.f32.bf16 %f1, %rs1;}`: inline assembly of the CUDA headers, in a scope of its
        // own on one line.
        if let Some(inner) = t.strip_prefix('{').and_then(|r| r.strip_suffix('}')) {
            for stmt in inner.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                if stmt.starts_with('.') {
                    return Err(err(
                        i - 1,
                        t,
                        "declarations in an inline scope are not supported",
                    ));
                }
                body.push((i - 1, stmt.to_string()));
                n += 1;
            }
            continue;
        }
        if t == "{" {
            return Err(err(i - 1, t, "nested scopes are not supported"));
        }
        body.push((i - 1, t.to_string()));
        n += 1;
    }
    let mut names = Names {
        regs: SPECIALS
            .iter()
            .enumerate()
            .map(|(k, s)| (s.to_string(), k as Reg))
            .collect(),
        params: params.iter().map(|p| (p.name.clone(), p.offset)).collect(),
        module_shared,
        kernel_shared,
        shared_at: HashMap::new(),
        shared_end: 0,
        labels,
    };
    let mut insts = Vec::with_capacity(body.len());
    for (line, t) in &body {
        let inst = decode::decode(t, *line + 1, &mut names).map_err(|msg| err(*line, t, &msg))?;
        insts.push(inst);
    }
    Ok((
        Kernel {
            name,
            params,
            param_bytes,
            insts,
            lines: lines.clone(),
            regs: names.regs.len(),
            shared_bytes: names.shared_end,
            max_threads,
        },
        i,
    ))
}
