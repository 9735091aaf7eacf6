//! The decoded form of a kernel: registers become indices into one register file, symbols
//! become offsets in their state space, labels become instruction indices, and each opcode with
//! its modifiers becomes one `Op` — so the interpreter never looks at text.

/// A register's index in a warp's register file. The special registers (`%tid.x`, ...) come
/// first, at the indices of [`SPECIALS`], filled in when a warp starts.
pub type Reg = u32;

/// The special registers the interpreter provides, in register-file order.
pub const SPECIALS: [&str; 14] = [
    "%tid.x",
    "%tid.y",
    "%tid.z",
    "%ntid.x",
    "%ntid.y",
    "%ntid.z",
    "%ctaid.x",
    "%ctaid.y",
    "%ctaid.z",
    "%nctaid.x",
    "%nctaid.y",
    "%nctaid.z",
    "%laneid",
    "%warpid",
];

/// An operand: a register or a value known when the kernel was decoded (immediates, the
/// address of a shared variable).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Src {
    Reg(Reg),
    Imm(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Space {
    Global,
    Shared,
    Param,
}

/// `[base + offset]`; symbols are already folded into `offset`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Addr {
    pub base: Option<Reg>,
    pub offset: i64,
}

/// Integer operand width in bits.
pub type Width = u8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntOp {
    Add,
    Sub,
    MulLo,
    Min,
    Max,
    Div,
    Rem,
    And,
    Or,
    Xor,
    Shl,
    Shr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatOp {
    Add,
    Sub,
    Mul,
    Div,
    Min,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloatUn {
    Neg,
    Abs,
    Sqrt,
    /// `rcp.rn`: 1/x correctly rounded.
    Rcp,
    /// `rcp.approx`: computed correctly rounded (within the hardware's error bound).
    RcpApprox,
    /// `ex2.approx`: 2^x, computed correctly rounded (to within f64's error).
    Ex2Approx,
    /// `lg2.approx`: log2(x), likewise.
    Lg2Approx,
}

/// IEEE rounding direction of an arithmetic instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Round {
    Nearest,
    Zero,
    Down,
    Up,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    /// Unordered variants (true when either operand is NaN).
    Equ,
    Neu,
    Ltu,
    Leu,
    Gtu,
    Geu,
    Num,
    Nan,
}

/// The operand type of a comparison.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpTy {
    S(Width),
    U(Width),
    F32,
    F64,
}

/// Scalar types that `cvt` converts between.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scalar {
    S(Width),
    U(Width),
    F16,
    Bf16,
    F32,
    F64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShflMode {
    Up,
    Down,
    Bfly,
    Idx,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PredOp {
    And,
    Or,
    Xor,
    Not,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// `mov`/`cvta` (bits: the destination width; the value is truncated to it).
    Mov {
        d: Reg,
        a: Src,
        bits: Width,
    },
    /// `mov.bN d, {a, b, ..}`: parts of `bits` each, the first in the lowest bits.
    Pack {
        d: Reg,
        parts: [Src; 4],
        n: u8,
        bits: Width,
    },
    /// `mov.bN {d0, d1, ..}, a`: the inverse.
    Unpack {
        d: [Reg; 4],
        n: u8,
        bits: Width,
        a: Src,
    },
    /// `cvt.rn.bf16x2.f32 d, a, b`: bf16(a) in the high half, bf16(b) in the low half.
    CvtBf16x2 {
        d: Reg,
        a: Src,
        b: Src,
    },
    Int {
        op: IntOp,
        w: Width,
        signed: bool,
        d: Reg,
        a: Src,
        b: Src,
    },
    /// `neg.sN` / `not.bN`.
    IntNeg {
        w: Width,
        d: Reg,
        a: Src,
    },
    IntNot {
        w: Width,
        d: Reg,
        a: Src,
    },
    /// `mul.wide.{s,u}32`: 32 × 32 → 64 bits.
    MulWide {
        signed: bool,
        d: Reg,
        a: Src,
        b: Src,
    },
    /// `mad.lo.{s,u}N`.
    MadLo {
        w: Width,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    F32 {
        op: FloatOp,
        rnd: Round,
        ftz: bool,
        d: Reg,
        a: Src,
        b: Src,
    },
    F32Un {
        op: FloatUn,
        ftz: bool,
        d: Reg,
        a: Src,
    },
    Fma32 {
        rnd: Round,
        ftz: bool,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    F64 {
        op: FloatOp,
        rnd: Round,
        d: Reg,
        a: Src,
        b: Src,
    },
    F64Un {
        op: FloatUn,
        d: Reg,
        a: Src,
    },
    Fma64 {
        rnd: Round,
        d: Reg,
        a: Src,
        b: Src,
        c: Src,
    },
    Setp {
        cmp: Cmp,
        ty: CmpTy,
        d: Reg,
        a: Src,
        b: Src,
    },
    /// `selp`: d = p ? a : b.
    Selp {
        bits: Width,
        d: Reg,
        a: Src,
        b: Src,
        p: Src,
    },
    Pred {
        op: PredOp,
        d: Reg,
        a: Src,
        b: Src,
    },
    Cvt {
        to: Scalar,
        from: Scalar,
        rnd: Option<Round>,
        int_rnd: bool,
        sat: bool,
        ftz: bool,
        d: Reg,
        a: Src,
    },
    /// Loads `n` elements of `bytes` each into `d[..n]`; `signed` sign-extends narrow ints.
    Ld {
        space: Space,
        bytes: u8,
        n: u8,
        signed: bool,
        d: [Reg; 4],
        addr: Addr,
    },
    St {
        space: Space,
        bytes: u8,
        n: u8,
        s: [Src; 4],
        addr: Addr,
    },
    Bra {
        target: u32,
    },
    Ret,
    /// `bar.sync 0` (`__syncthreads`).
    Bar,
    Shfl {
        mode: ShflMode,
        d: Reg,
        p: Option<Reg>,
        a: Src,
        b: Src,
        c: Src,
        mask: Src,
    },
    /// `mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32`.
    MmaBf16 {
        d: [Reg; 4],
        a: [Reg; 4],
        b: [Reg; 2],
        c: [Src; 4],
    },
}

#[derive(Clone, Debug)]
pub struct Inst {
    pub op: Op,
    /// `@%p` (false) or `@!%p` (true).
    pub guard: Option<(Reg, bool)>,
    /// The line in the PTX text, and the text, for fault messages.
    pub line: usize,
}
