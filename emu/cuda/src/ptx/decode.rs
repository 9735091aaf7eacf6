//! One instruction line to an [`Inst`]: the opcode's dotted modifiers pick the `Op` variant and
//! its types, the operands become registers, immediates and addresses.

use super::ir::*;
use super::names::Names;

type R<T> = Result<T, String>;

pub(crate) fn decode(text: &str, line: usize, names: &mut Names) -> R<Inst> {
    let t = text.trim().trim_end_matches(';').trim();
    let (guard, t) = match t.strip_prefix('@') {
        Some(rest) => {
            let (g, rest) = rest
                .split_once(char::is_whitespace)
                .ok_or("a guard without an instruction")?;
            let (neg, g) = match g.strip_prefix('!') {
                Some(g) => (true, g),
                None => (false, g),
            };
            (Some((names.reg(g), neg)), rest.trim())
        }
        None => (None, t),
    };
    let (opcode, rest) = t.split_once(char::is_whitespace).unwrap_or((t, ""));
    let ops = split_operands(rest.trim());
    let parts: Vec<&str> = opcode.split('.').collect();
    let op = decode_op(&parts, &ops, names)?;
    Ok(Inst { op, guard, line })
}

/// Operands split at top-level commas (not inside `{}` or `[]`).
fn split_operands(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut depth = 0i32;
    let mut cur = String::new();
    for c in s.chars() {
        match c {
            '{' | '[' => depth += 1,
            '}' | ']' => depth -= 1,
            ',' if depth == 0 => {
                out.push(cur.trim().to_string());
                cur.clear();
                continue;
            }
            _ => {}
        }
        cur.push(c);
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_string());
    }
    out
}

fn has(parts: &[&str], m: &str) -> bool {
    parts[1..].contains(&m)
}

/// The type modifier (the last one that names a type).
fn ty(parts: &[&str]) -> R<&'static str> {
    for p in parts[1..].iter().rev() {
        let t = match *p {
            "b8" => "b8",
            "u8" => "u8",
            "s8" => "s8",
            "b16" => "b16",
            "u16" => "u16",
            "s16" => "s16",
            "f16" => "f16",
            "bf16" => "bf16",
            "b32" => "b32",
            "u32" => "u32",
            "s32" => "s32",
            "f32" => "f32",
            "b64" => "b64",
            "u64" => "u64",
            "s64" => "s64",
            "f64" => "f64",
            "pred" => "pred",
            _ => continue,
        };
        return Ok(t);
    }
    Err("no type modifier".into())
}

fn width(t: &str) -> Width {
    match t {
        "b8" | "u8" | "s8" => 8,
        "b16" | "u16" | "s16" | "f16" | "bf16" => 16,
        "b32" | "u32" | "s32" | "f32" => 32,
        "pred" => 1,
        _ => 64,
    }
}

fn round(parts: &[&str]) -> Option<Round> {
    parts[1..].iter().find_map(|p| match *p {
        "rn" | "rni" => Some(Round::Nearest),
        "rz" | "rzi" => Some(Round::Zero),
        "rm" | "rmi" => Some(Round::Down),
        "rp" | "rpi" => Some(Round::Up),
        _ => None,
    })
}

fn scalar(t: &str) -> R<Scalar> {
    Ok(match t {
        "u8" | "b8" => Scalar::U(8),
        "s8" => Scalar::S(8),
        "u16" | "b16" => Scalar::U(16),
        "s16" => Scalar::S(16),
        "u32" | "b32" => Scalar::U(32),
        "s32" => Scalar::S(32),
        "u64" | "b64" => Scalar::U(64),
        "s64" => Scalar::S(64),
        "f16" => Scalar::F16,
        "bf16" => Scalar::Bf16,
        "f32" => Scalar::F32,
        "f64" => Scalar::F64,
        other => return Err(format!("cvt of type {other}")),
    })
}

fn reg(s: &str, names: &mut Names) -> R<Reg> {
    if s.starts_with('%') {
        Ok(names.reg(s))
    } else {
        Err(format!("expected a register, found `{s}`"))
    }
}

fn src(s: &str, names: &mut Names) -> R<Src> {
    if s.starts_with('%') {
        return Ok(Src::Reg(names.reg(s)));
    }
    if let Some(v) = imm(s) {
        return Ok(Src::Imm(v));
    }
    if let Some((_, v)) = names.symbol(s) {
        return Ok(Src::Imm(v));
    }
    Err(format!("unknown operand `{s}`"))
}

/// Integer and float immediates: `-4`, `0x1F`, `0f3F800000` (f32 bits), `0d3FF0...` (f64 bits).
fn imm(s: &str) -> Option<u64> {
    let s = s.trim_end_matches('U');
    if let Some(h) = s.strip_prefix("0f").or_else(|| s.strip_prefix("0F")) {
        return u32::from_str_radix(h, 16).ok().map(u64::from);
    }
    if let Some(h) = s.strip_prefix("0d").or_else(|| s.strip_prefix("0D")) {
        return u64::from_str_radix(h, 16).ok();
    }
    if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(h, 16).ok();
    }
    if let Some(n) = s.strip_prefix('-') {
        return n.parse::<u64>().ok().map(|v| v.wrapping_neg());
    }
    s.parse::<u64>().ok()
}

/// `[%rd1+16]`, `[name]`, `[name+4]`, `[%r2]` → base register and constant offset, with the
/// state space a symbol implies.
fn addr(s: &str, names: &mut Names) -> R<(Addr, Option<Space>)> {
    let inner = s
        .strip_prefix('[')
        .and_then(|s| s.strip_suffix(']'))
        .ok_or_else(|| format!("expected an address, found `{s}`"))?
        .trim();
    let (base, off) = match inner.find(['+', '-']).filter(|&p| p > 0) {
        Some(p) => {
            let off = inner[p..].trim_start_matches('+');
            let off = imm(off).ok_or_else(|| format!("bad offset in `{s}`"))? as i64;
            (inner[..p].trim(), off)
        }
        None => (inner, 0),
    };
    if base.starts_with('%') {
        return Ok((
            Addr {
                base: Some(names.reg(base)),
                offset: off,
            },
            None,
        ));
    }
    let (space, v) = names
        .symbol(base)
        .ok_or_else(|| format!("unknown symbol `{base}`"))?;
    Ok((
        Addr {
            base: None,
            offset: v as i64 + off,
        },
        Some(space),
    ))
}

/// `{%f1, %f2}` → its members.
fn vector(s: &str) -> R<Vec<&str>> {
    let inner = s
        .strip_prefix('{')
        .and_then(|s| s.strip_suffix('}'))
        .ok_or_else(|| format!("expected a vector, found `{s}`"))?;
    Ok(inner.split(',').map(str::trim).collect())
}

fn need(ops: &[String], n: usize) -> R<()> {
    if ops.len() == n {
        Ok(())
    } else {
        Err(format!("expected {n} operands, found {}", ops.len()))
    }
}

fn decode_op(parts: &[&str], ops: &[String], names: &mut Names) -> R<Op> {
    let base = parts[0];
    match base {
        "ret" | "exit" => Ok(Op::Ret),
        "bra" => {
            need(ops, 1)?;
            let target = names
                .label(&ops[0])
                .ok_or_else(|| format!("unknown label {}", ops[0]))?;
            Ok(Op::Bra { target })
        }
        "bar" | "barrier" => {
            // `bar.sync 0` / `barrier.sync 0`: barrier 0, all threads of the block.
            if !(has(parts, "sync") || parts.len() == 1)
                || ops.len() != 1
                || imm(&ops[0]) != Some(0)
            {
                return Err("only `bar.sync 0` (__syncthreads) is supported".into());
            }
            Ok(Op::Bar)
        }
        "mov" | "cvta" => {
            need(ops, 2)?;
            let t = ty(parts)?;
            if base == "mov" && (ops[0].starts_with('{') || ops[1].starts_with('{')) {
                return pack(t, ops, names);
            }
            if base == "cvta" && !has(parts, "to") {
                return Err("cvta to the generic space is not supported".into());
            }
            if base == "cvta" && !has(parts, "global") {
                return Err("cvta of a space other than global is not supported".into());
            }
            Ok(Op::Mov {
                d: reg(&ops[0], names)?,
                a: src(&ops[1], names)?,
                bits: width(t),
            })
        }
        "add" | "sub" | "mul" | "div" | "rem" | "min" | "max" | "and" | "or" | "xor" | "shl"
        | "shr" => arith(base, parts, ops, names),
        "mad" => {
            need(ops, 4)?;
            let t = ty(parts)?;
            if !has(parts, "lo") || t.starts_with('f') {
                return Err("only mad.lo of integers is supported".into());
            }
            Ok(Op::MadLo {
                w: width(t),
                d: reg(&ops[0], names)?,
                a: src(&ops[1], names)?,
                b: src(&ops[2], names)?,
                c: src(&ops[3], names)?,
            })
        }
        "fma" => {
            need(ops, 4)?;
            let rnd = round(parts).ok_or("fma needs a rounding modifier")?;
            let (d, a, b, c) = (
                reg(&ops[0], names)?,
                src(&ops[1], names)?,
                src(&ops[2], names)?,
                src(&ops[3], names)?,
            );
            match ty(parts)? {
                "f32" => Ok(Op::Fma32 {
                    rnd,
                    ftz: has(parts, "ftz"),
                    d,
                    a,
                    b,
                    c,
                }),
                "f64" => Ok(Op::Fma64 { rnd, d, a, b, c }),
                t => Err(format!("fma.{t}")),
            }
        }
        "neg" | "abs" | "not" | "sqrt" | "rcp" | "ex2" | "lg2" => unary(base, parts, ops, names),
        "setp" => {
            need(ops, 3)?;
            if ops[0].contains('|') {
                return Err("setp with two destinations is not supported".into());
            }
            if parts.len() != 3 {
                return Err("setp with a boolean combination or ftz is not supported".into());
            }
            let cmp = match parts[1] {
                "eq" => Cmp::Eq,
                "ne" => Cmp::Ne,
                "lt" | "lo" => Cmp::Lt,
                "le" | "ls" => Cmp::Le,
                "gt" | "hi" => Cmp::Gt,
                "ge" | "hs" => Cmp::Ge,
                "equ" => Cmp::Equ,
                "neu" => Cmp::Neu,
                "ltu" => Cmp::Ltu,
                "leu" => Cmp::Leu,
                "gtu" => Cmp::Gtu,
                "geu" => Cmp::Geu,
                "num" => Cmp::Num,
                "nan" => Cmp::Nan,
                c => return Err(format!("comparison {c}")),
            };
            let t = ty(parts)?;
            let cty = match t {
                "f32" => CmpTy::F32,
                "f64" => CmpTy::F64,
                t if t.starts_with('s') => CmpTy::S(width(t)),
                t => CmpTy::U(width(t)),
            };
            if matches!(cty, CmpTy::S(_) | CmpTy::U(_))
                && !matches!(
                    cmp,
                    Cmp::Eq | Cmp::Ne | Cmp::Lt | Cmp::Le | Cmp::Gt | Cmp::Ge
                )
            {
                return Err("unordered comparison of integers".into());
            }
            Ok(Op::Setp {
                cmp,
                ty: cty,
                d: reg(&ops[0], names)?,
                a: src(&ops[1], names)?,
                b: src(&ops[2], names)?,
            })
        }
        "selp" => {
            need(ops, 4)?;
            Ok(Op::Selp {
                bits: width(ty(parts)?),
                d: reg(&ops[0], names)?,
                a: src(&ops[1], names)?,
                b: src(&ops[2], names)?,
                p: src(&ops[3], names)?,
            })
        }
        "cvt" if has(parts, "bf16x2") => {
            need(ops, 3)?;
            if !has(parts, "rn")
                || has(parts, "relu")
                || has(parts, "satfinite")
                || ty(parts)? != "f32"
            {
                return Err("only cvt.rn.bf16x2.f32".into());
            }
            Ok(Op::CvtBf16x2 {
                d: reg(&ops[0], names)?,
                a: src(&ops[1], names)?,
                b: src(&ops[2], names)?,
            })
        }
        "cvt" => {
            need(ops, 2)?;
            let types: Vec<&str> = parts[1..]
                .iter()
                .copied()
                .filter(|p| {
                    matches!(
                        *p,
                        "u8" | "s8"
                            | "u16"
                            | "s16"
                            | "u32"
                            | "s32"
                            | "u64"
                            | "s64"
                            | "f16"
                            | "bf16"
                            | "f32"
                            | "f64"
                            | "b16"
                            | "b32"
                            | "b64"
                    )
                })
                .collect();
            if types.len() != 2 {
                return Err("cvt needs a destination and a source type".into());
            }
            let to = scalar(types[0])?;
            let from = scalar(types[1])?;
            let int_rnd = parts[1..].iter().any(|p| p.ends_with('i') && p.len() == 3);
            Ok(Op::Cvt {
                to,
                from,
                rnd: round(parts),
                int_rnd,
                sat: has(parts, "sat"),
                ftz: has(parts, "ftz"),
                d: reg(&ops[0], names)?,
                a: src(&ops[1], names)?,
            })
        }
        "ld" | "st" => mem(base == "ld", parts, ops, names),
        "shfl" => {
            if !has(parts, "sync") || ty(parts)? != "b32" {
                return Err("only shfl.sync of b32 is supported".into());
            }
            need(ops, 5)?;
            let mode = if has(parts, "bfly") {
                ShflMode::Bfly
            } else if has(parts, "up") {
                ShflMode::Up
            } else if has(parts, "down") {
                ShflMode::Down
            } else if has(parts, "idx") {
                ShflMode::Idx
            } else {
                return Err("shfl mode".into());
            };
            let (d, p) = match ops[0].split_once('|') {
                Some((d, p)) => (reg(d.trim(), names)?, Some(reg(p.trim(), names)?)),
                None => (reg(&ops[0], names)?, None),
            };
            Ok(Op::Shfl {
                mode,
                d,
                p,
                a: src(&ops[1], names)?,
                b: src(&ops[2], names)?,
                c: src(&ops[3], names)?,
                mask: src(&ops[4], names)?,
            })
        }
        "mma" => {
            let form = parts[1..].join(".");
            if form != "sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32" {
                return Err(format!(
                    "mma form {form} (only m16n8k16 row.col f32 += bf16·bf16)"
                ));
            }
            need(ops, 4)?;
            let regs = |s: &str, n: usize, names: &mut Names| -> R<Vec<Reg>> {
                let v = vector(s)?;
                if v.len() != n {
                    return Err(format!("expected {n} registers in `{s}`"));
                }
                v.iter().map(|r| reg(r, names)).collect()
            };
            let d = regs(&ops[0], 4, names)?;
            let a = regs(&ops[1], 4, names)?;
            let b = regs(&ops[2], 2, names)?;
            let cv = vector(&ops[3])?;
            if cv.len() != 4 {
                return Err("mma accumulator needs 4 registers".into());
            }
            let c: Vec<Src> = cv.iter().map(|r| src(r, names)).collect::<R<_>>()?;
            Ok(Op::MmaBf16 {
                d: [d[0], d[1], d[2], d[3]],
                a: [a[0], a[1], a[2], a[3]],
                b: [b[0], b[1]],
                c: [c[0], c[1], c[2], c[3]],
            })
        }
        _ => Err("unsupported instruction".into()),
    }
}

fn arith(base: &str, parts: &[&str], ops: &[String], names: &mut Names) -> R<Op> {
    need(ops, 3)?;
    let t = ty(parts)?;
    let (d, a, b) = (
        reg(&ops[0], names)?,
        src(&ops[1], names)?,
        src(&ops[2], names)?,
    );
    if t == "pred" {
        let op = match base {
            "and" => PredOp::And,
            "or" => PredOp::Or,
            "xor" => PredOp::Xor,
            _ => return Err(format!("{base}.pred")),
        };
        return Ok(Op::Pred { op, d, a, b });
    }
    if t == "f32" || t == "f64" {
        let op = match base {
            "add" => FloatOp::Add,
            "sub" => FloatOp::Sub,
            "mul" => FloatOp::Mul,
            "div" => {
                if !has(parts, "rn") {
                    return Err(
                        "only div.rn of floats is supported (div.approx/full are not)".into(),
                    );
                }
                FloatOp::Div
            }
            "min" => FloatOp::Min,
            "max" => FloatOp::Max,
            _ => return Err(format!("{base}.{t}")),
        };
        if has(parts, "sat") || has(parts, "NaN") {
            return Err("saturating or NaN-propagating float arithmetic".into());
        }
        let rnd = round(parts).unwrap_or(Round::Nearest);
        if rnd != Round::Nearest {
            return Err("directed rounding of add/sub/mul/div (only .rn)".into());
        }
        return Ok(if t == "f32" {
            Op::F32 {
                op,
                rnd,
                ftz: has(parts, "ftz"),
                d,
                a,
                b,
            }
        } else {
            Op::F64 { op, rnd, d, a, b }
        });
    }
    let w = width(t);
    let signed = t.starts_with('s');
    if base == "mul" {
        if has(parts, "wide") {
            if w != 32 {
                return Err("mul.wide of other than 32-bit operands".into());
            }
            return Ok(Op::MulWide { signed, d, a, b });
        }
        if !has(parts, "lo") {
            return Err("integer mul other than .lo/.wide".into());
        }
    }
    if matches!(base, "add" | "sub") && (has(parts, "sat") || has(parts, "cc")) {
        return Err("saturating or carry integer arithmetic".into());
    }
    let op = match base {
        "add" => IntOp::Add,
        "sub" => IntOp::Sub,
        "mul" => IntOp::MulLo,
        "min" => IntOp::Min,
        "max" => IntOp::Max,
        "div" => IntOp::Div,
        "rem" => IntOp::Rem,
        "and" => IntOp::And,
        "or" => IntOp::Or,
        "xor" => IntOp::Xor,
        "shl" => IntOp::Shl,
        _ => IntOp::Shr,
    };
    Ok(Op::Int {
        op,
        w,
        signed,
        d,
        a,
        b,
    })
}

fn unary(base: &str, parts: &[&str], ops: &[String], names: &mut Names) -> R<Op> {
    need(ops, 2)?;
    let t = ty(parts)?;
    let (d, a) = (reg(&ops[0], names)?, src(&ops[1], names)?);
    if t == "pred" {
        if base != "not" {
            return Err(format!("{base}.pred"));
        }
        return Ok(Op::Pred {
            op: PredOp::Not,
            d,
            a,
            b: Src::Imm(0),
        });
    }
    if t != "f32" && t != "f64" {
        let w = width(t);
        return match base {
            "neg" => Ok(Op::IntNeg { w, d, a }),
            "not" => Ok(Op::IntNot { w, d, a }),
            _ => Err(format!("{base}.{t}")),
        };
    }
    let approx = has(parts, "approx");
    let op = match (base, approx) {
        ("neg", _) => FloatUn::Neg,
        ("abs", _) => FloatUn::Abs,
        ("sqrt", false) if has(parts, "rn") => FloatUn::Sqrt,
        ("rcp", false) if has(parts, "rn") => FloatUn::Rcp,
        ("rcp", true) => FloatUn::RcpApprox,
        ("ex2", true) => FloatUn::Ex2Approx,
        ("lg2", true) => FloatUn::Lg2Approx,
        _ => {
            return Err(format!(
                "{} (only the .rn or .approx forms)",
                parts.join(".")
            ));
        }
    };
    Ok(if t == "f32" {
        Op::F32Un {
            op,
            ftz: has(parts, "ftz"),
            d,
            a,
        }
    } else {
        Op::F64Un { op, d, a }
    })
}

fn mem(load: bool, parts: &[&str], ops: &[String], names: &mut Names) -> R<Op> {
    need(ops, 2)?;
    let t = ty(parts)?;
    let bytes = (width(t) / 8).max(1);
    let n = if has(parts, "v4") {
        4
    } else if has(parts, "v2") {
        2
    } else {
        1
    };
    let declared = if has(parts, "global") {
        Some(Space::Global)
    } else if has(parts, "shared") {
        Some(Space::Shared)
    } else if has(parts, "param") {
        Some(Space::Param)
    } else if has(parts, "local") || has(parts, "const") {
        return Err("local and const memory are not supported".into());
    } else {
        return Err("generic addressing (ld/st without a state space) is not supported".into());
    };
    let (a_text, v_text) = if load {
        (&ops[1], &ops[0])
    } else {
        (&ops[0], &ops[1])
    };
    let (addr, sym_space) = addr(a_text, names)?;
    let space = declared.or(sym_space).ok_or("no state space")?;
    if let Some(s) = sym_space
        && s != space
    {
        return Err(format!("a {s:?} symbol used in a {space:?} access"));
    }
    let members: Vec<&str> = if n > 1 {
        vector(v_text)?
    } else {
        vec![v_text.as_str()]
    };
    if members.len() != n as usize {
        return Err(format!("expected {n} values in `{v_text}`"));
    }
    if load {
        let mut d = [0; 4];
        for (k, m) in members.iter().enumerate() {
            d[k] = reg(m, names)?;
        }
        Ok(Op::Ld {
            space,
            bytes,
            n,
            signed: t.starts_with('s'),
            d,
            addr,
        })
    } else {
        let mut s = [Src::Imm(0); 4];
        for (k, m) in members.iter().enumerate() {
            s[k] = src(m, names)?;
        }
        Ok(Op::St {
            space,
            bytes,
            n,
            s,
            addr,
        })
    }
}

/// `mov.b32 %r, {%rs1, %rs2}` (pack) and `mov.b64 {%r1, %r2}, %rd` (unpack).
fn pack(t: &str, ops: &[String], names: &mut Names) -> R<Op> {
    let total = width(t);
    if ops[1].starts_with('{') {
        let members = vector(&ops[1])?;
        let n = members.len();
        if !matches!(n, 2 | 4) || ops[0].starts_with('{') {
            return Err("pack of other than 2 or 4 parts".into());
        }
        let mut parts = [Src::Imm(0); 4];
        for (k, m) in members.iter().enumerate() {
            parts[k] = src(m, names)?;
        }
        return Ok(Op::Pack {
            d: reg(&ops[0], names)?,
            parts,
            n: n as u8,
            bits: total / n as u8,
        });
    }
    let members = vector(&ops[0])?;
    let n = members.len();
    if !matches!(n, 2 | 4) {
        return Err("unpack into other than 2 or 4 parts".into());
    }
    let mut d = [0; 4];
    for (k, m) in members.iter().enumerate() {
        if *m == "_" {
            return Err("unpack into `_` is not supported".into());
        }
        d[k] = reg(m, names)?;
    }
    Ok(Op::Unpack {
        d,
        n: n as u8,
        bits: total / n as u8,
        a: src(&ops[1], names)?,
    })
}
