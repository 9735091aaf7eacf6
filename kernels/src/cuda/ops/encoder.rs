//! encoder.cu: token + position embedding, and its deterministic backward.

use cudarc::driver::{CudaSlice, CudaView, CudaViewMut, PushKernelArg};

use super::{Operand, alloc_zeros, grid_1d, int, launched, need};
use crate::cuda::prep::TokenBuckets;
use crate::cuda::{CudaError, Device};

/// [`TokenBuckets`] of one batch, uploaded: what `encoder_backward_wte` reads. Built on the
/// host from the batch's token ids (the ids are checked against the vocabulary there), into
/// device buffers allocated once for the largest batch, so a step allocates nothing.
pub struct DeviceTokenBuckets {
    tokens: CudaSlice<u32>,
    offsets: CudaSlice<u32>,
    positions: CudaSlice<u32>,
    /// The most positions a batch may have.
    capacity: usize,
    /// `U`: the distinct tokens of the batch last filled in.
    distinct: usize,
    /// `B·T`: its positions.
    positions_len: usize,
    vocab: usize,
}

impl DeviceTokenBuckets {
    /// Empty buckets for batches of up to `capacity` positions (U ≤ B·T distinct tokens).
    pub fn new(dev: &Device, capacity: usize) -> Result<Self, CudaError> {
        let what = "the encoder's token buckets";
        Ok(DeviceTokenBuckets {
            tokens: alloc_zeros(dev, capacity, what)?,
            offsets: alloc_zeros(dev, capacity + 1, what)?,
            positions: alloc_zeros(dev, capacity, what)?,
            capacity,
            distinct: 0,
            positions_len: 0,
            vocab: 0,
        })
    }

    /// Buckets `inp [B·T]` (every id `< vocab`, else a panic as on the CPU) and uploads them
    /// in place of the last batch's.
    pub fn fill(&mut self, dev: &Device, inp: &[u32], vocab: usize) -> Result<(), CudaError> {
        assert!(
            inp.len() <= self.capacity,
            "encoder: a batch of {} positions, buckets for {}",
            inp.len(),
            self.capacity
        );
        let b = TokenBuckets::new(inp, vocab);
        for (src, dst) in [
            (&b.tokens, &mut self.tokens),
            (&b.offsets, &mut self.offsets),
            (&b.positions, &mut self.positions),
        ] {
            dev.stream
                .memcpy_htod(src.as_slice(), &mut dst.slice_mut(..src.len()))
                .map_err(|e| CudaError::Driver {
                    during: "uploading the encoder's token buckets".into(),
                    msg: e.to_string(),
                })?;
        }
        self.distinct = b.len();
        self.positions_len = inp.len();
        self.vocab = vocab;
        Ok(())
    }
}

/// out [B·T, C] = wte [V, C] row inp[bt] + wpe [maxT ≥ T, C] row (bt mod T), overwritten.
/// `inp` [B·T] holds token ids the host has checked to be `< V`; out is stored as `A`.
#[allow(clippy::too_many_arguments)] // the kernel's contract: every buffer with its shape
pub fn encoder_forward<A: Operand>(
    dev: &Device,
    out: &mut CudaViewMut<'_, A>,
    inp: &CudaView<'_, u32>,
    wte: &CudaView<'_, f32>,
    wpe: &CudaView<'_, f32>,
    b: usize,
    t: usize,
    c: usize,
    v: usize,
) -> Result<(), CudaError> {
    const OP: &str = "encoder_forward";
    need(OP, "out", out.len(), b * t * c);
    need(OP, "inp", inp.len(), b * t);
    need(OP, "wte", wte.len(), v * c);
    need(OP, "wpe", wpe.len(), t * c);
    let f = dev.function("encoder", &format!("{OP}{}", A::SUFFIX))?;
    let args = [b, t, c, v].map(|x| int(OP, "a dimension", x));
    let mut launch = dev.stream.launch_builder(&f);
    launch.arg(out).arg(inp).arg(wte).arg(wpe);
    for a in &args {
        launch.arg(a);
    }
    // SAFETY: encoder_forward{,_bf16}(out [B·T, C] A, inp [B·T] u32, wte [V, C], wpe [≥T, C], B, T, C,
    // V: i32): views of at least those sizes (checked above); an id ≥ V is checked inside
    // (NaN, no read); grid-stride over B·T·C.
    launched(OP, unsafe { launch.launch(grid_1d(b * t * c)) })
}

/// dwte [V, C] and dwpe [maxT, C] += the encoder's gradients from dout [B·T, C], in the
/// CPU's order of additions (bit-identical to it). `buckets` come from this batch's ids.
#[allow(clippy::too_many_arguments)] // the kernels' contract: every buffer with its shape
pub fn encoder_backward(
    dev: &Device,
    dwte: &mut CudaViewMut<'_, f32>,
    dwpe: &mut CudaViewMut<'_, f32>,
    dout: &CudaView<'_, f32>,
    buckets: &DeviceTokenBuckets,
    b: usize,
    t: usize,
    c: usize,
) -> Result<(), CudaError> {
    const OP: &str = "encoder_backward";
    need(OP, "dwte", dwte.len(), buckets.vocab * c);
    need(OP, "dwpe", dwpe.len(), t * c);
    need(OP, "dout", dout.len(), b * t * c);
    assert_eq!(
        buckets.positions_len,
        b * t,
        "{OP}: the token buckets are of another batch shape"
    );
    let (bi, ti, ci) = (int(OP, "B", b), int(OP, "T", t), int(OP, "C", c));
    let s = &dev.stream;

    let f = dev.function("encoder", "encoder_backward_wpe")?;
    let mut launch = s.launch_builder(&f);
    launch.arg(dwpe).arg(dout).arg(&bi).arg(&ti).arg(&ci);
    // SAFETY: encoder_backward_wpe(dwpe [maxT, C], dout [B·T, C], B, T, C: i32): it touches
    // the first T·C entries of dwpe and B·T·C of dout, both checked above; grid-stride.
    launched("encoder_backward_wpe", unsafe {
        launch.launch(grid_1d(t * c))
    })?;

    if buckets.distinct == 0 {
        return Ok(());
    }
    let f = dev.function("encoder", "encoder_backward_wte")?;
    let u = int(OP, "U", buckets.distinct);
    let mut launch = s.launch_builder(&f);
    launch
        .arg(dwte)
        .arg(dout)
        .arg(&buckets.tokens)
        .arg(&buckets.offsets)
        .arg(&buckets.positions)
        .arg(&u)
        .arg(&ci);
    let grid = super::grid_rows(buckets.distinct, c);
    // SAFETY: encoder_backward_wte(dwte [V, C], dout [B·T, C], bucket_tokens [U],
    // bucket_offsets [U+1], bucket_positions [B·T] u32, U, C: i32): the bucket arrays were
    // built by TokenBuckets::new from ids checked < V, every position < B·T, and uploaded whole;
    // dwte and dout sizes checked above; one block per bucket (grid-stride).
    launched("encoder_backward_wte", unsafe { launch.launch(grid) })
}
