//! A multi-layer perceptron classifier over the same op set as the GPT.

use std::ops::Range;

use convoy_kernels::{activation, loss, matmul};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{BucketHook, Model, TensorInfo};
use crate::collective::Bucket;
use crate::optim::ParamGroup;
use crate::spec::{Activation, LossKind};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MlpConfig {
    pub inputs: usize,
    pub hidden: Vec<usize>,
    pub classes: usize,
    pub activation: Activation,
    pub loss: LossKind,
}

impl MlpConfig {
    /// Layer widths from the input to the logits.
    fn dims(&self) -> Vec<usize> {
        let mut d = vec![self.inputs];
        d.extend(&self.hidden);
        d.push(self.classes);
        d
    }

    /// (weight, bias) ranges of each linear layer; weight [out, in], bias [out].
    fn layers(&self) -> Vec<(Range<usize>, Range<usize>)> {
        let dims = self.dims();
        let mut at = 0;
        dims.windows(2)
            .map(|w| {
                let (i, o) = (w[0], w[1]);
                let wr = at..at + o * i;
                let br = wr.end..wr.end + o;
                at = br.end;
                (wr, br)
            })
            .collect()
    }

    pub fn num_params(&self) -> usize {
        self.layers().last().map_or(0, |(_, b)| b.end)
    }
}

pub struct Mlp {
    cfg: MlpConfig,
    layers: Vec<(Range<usize>, Range<usize>)>,
    /// One bucket per layer (weight and bias are adjacent), last layer first.
    buckets: Vec<Bucket>,
    params: Vec<f32>,
    grads: Vec<f32>,
    /// Pre-activation outputs of each linear layer [B, out]; the last one holds the logits.
    pre: Vec<Vec<f32>>,
    /// Activation outputs of each hidden layer [B, out].
    post: Vec<Vec<f32>>,
    /// Gradient scratch [B, widest layer], two so one layer's output and input grads coexist.
    dbuf: [Vec<f32>; 2],
    losses: Vec<f32>,
    onehot: Vec<f32>,
    batch: usize,
}

impl Mlp {
    /// PyTorch's `nn.Linear` initialisation: weights and biases uniform in ±1/sqrt(fan_in).
    pub fn new(cfg: MlpConfig, seed: u64) -> Mlp {
        let layers = cfg.layers();
        let dims = cfg.dims();
        let mut params = vec![0.0f32; cfg.num_params()];
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        for ((w, b), fan_in) in layers.iter().zip(&dims) {
            let bound = 1.0 / (*fan_in as f32).sqrt();
            for x in &mut params[w.start..b.end] {
                *x = rng.random_range(-bound..bound);
            }
        }
        let grads = vec![0.0; params.len()];
        let buckets = layers
            .iter()
            .rev()
            .map(|(w, b)| std::iter::once(w.start..b.end).collect())
            .collect();
        Mlp {
            cfg,
            layers,
            buckets,
            params,
            grads,
            pre: Vec::new(),
            post: Vec::new(),
            dbuf: [Vec::new(), Vec::new()],
            losses: Vec::new(),
            onehot: Vec::new(),
            batch: 0,
        }
    }

    pub fn config(&self) -> &MlpConfig {
        &self.cfg
    }

    /// Computes the logits [B, classes] of `x` [B, inputs]; returns them.
    pub fn forward(&mut self, x: &[f32], b: usize) -> &[f32] {
        let dims = self.cfg.dims();
        assert_eq!(x.len(), b * self.cfg.inputs);
        let n = self.layers.len();
        self.pre.resize_with(n, Vec::new);
        self.post.resize_with(n - 1, Vec::new);
        for i in 0..n {
            let (cin, cout) = (dims[i], dims[i + 1]);
            let (wr, br) = self.layers[i].clone();
            self.pre[i].resize(b * cout, 0.0);
            let inp = if i == 0 {
                x
            } else {
                &self.post[i - 1][..b * cin]
            };
            matmul::matmul_forward(
                &mut self.pre[i],
                inp,
                &self.params[wr],
                Some(&self.params[br]),
                b,
                cin,
                cout,
            );
            if i + 1 < n {
                self.post[i].resize(b * cout, 0.0);
                let (pre, post) = (&self.pre[i], &mut self.post[i]);
                match self.cfg.activation {
                    Activation::Relu => activation::relu_forward(post, pre),
                    Activation::Tanh => activation::tanh_forward(post, pre),
                    Activation::Sigmoid => activation::sigmoid_forward(post, pre),
                }
            }
        }
        self.batch = b;
        &self.pre[n - 1]
    }

    /// Loss of the last forward against `labels` [B]: returns (sum, count) where the mean loss
    /// is sum / count (count = B for cross-entropy, B·classes for MSE, as PyTorch's means).
    /// With `grad_scale`, also prepares the logits' gradient for `backward`.
    pub fn loss(&mut self, labels: &[u32], grad_scale: Option<f32>) -> (f64, usize) {
        let (b, k) = (self.batch, self.cfg.classes);
        assert_eq!(labels.len(), b);
        let widest = self.widest();
        let logits = &self.pre[self.layers.len() - 1];
        let d = &mut self.dbuf[0];
        if grad_scale.is_some() {
            d.resize(b * widest, 0.0);
        }
        let dlogits = grad_scale.map(|_| &mut d[..b * k]);
        match self.cfg.loss {
            LossKind::CrossEntropy => {
                self.losses.resize(b, 0.0);
                let scale = grad_scale.unwrap_or(0.0) / b as f32;
                loss::crossentropy_forward_backward(
                    &mut self.losses,
                    dlogits,
                    logits,
                    labels,
                    b,
                    k,
                    k,
                    scale,
                )
            }
            LossKind::Mse => {
                self.onehot.clear();
                self.onehot.resize(b * k, 0.0);
                for (row, &y) in labels.iter().enumerate() {
                    self.onehot[row * k + y as usize] = 1.0;
                }
                let scale = grad_scale.unwrap_or(0.0) / (b * k) as f32;
                (
                    loss::mse_forward_backward(dlogits, logits, &self.onehot, scale),
                    b * k,
                )
            }
        }
    }

    fn widest(&self) -> usize {
        self.cfg.dims().into_iter().max().unwrap_or(1)
    }

    /// Accumulates gradients of the last `loss(.., Some(scale))` into the gradient buffer.
    pub fn backward(&mut self, x: &[f32], hook: BucketHook<'_>) -> crate::Result<()> {
        let dims = self.cfg.dims();
        let b = self.batch;
        let n = self.layers.len();
        self.dbuf[1].resize(b * self.widest(), 0.0);
        // dbuf[cur] holds the gradient of layer i's output; dbuf[1 - cur] receives its input's.
        let mut cur = 0;
        for i in (0..n).rev() {
            let (cin, cout) = (dims[i], dims[i + 1]);
            let (wr, br) = self.layers[i].clone();
            if i + 1 < n {
                // Through the activation: d(pre) from d(post), into the other buffer.
                let [d0, d1] = &mut self.dbuf;
                let (dpost, dpre) = if cur == 0 { (&*d0, d1) } else { (&*d1, d0) };
                let dpre = &mut dpre[..b * cout];
                dpre.fill(0.0);
                let dpost = &dpost[..b * cout];
                match self.cfg.activation {
                    Activation::Relu => activation::relu_backward(dpre, &self.pre[i], dpost),
                    Activation::Tanh => activation::tanh_backward(dpre, &self.post[i], dpost),
                    Activation::Sigmoid => activation::sigmoid_backward(dpre, &self.post[i], dpost),
                }
                cur = 1 - cur;
            }
            let inp = if i == 0 {
                x
            } else {
                &self.post[i - 1][..b * cin]
            };
            let [d0, d1] = &mut self.dbuf;
            let (dout, dinp) = if cur == 0 { (&*d0, d1) } else { (&*d1, d0) };
            let dinp = &mut dinp[..b * cin];
            dinp.fill(0.0);
            let (gw, gb) = self.grads.split_at_mut(br.start);
            matmul::matmul_backward(
                dinp,
                &mut gw[wr.clone()],
                Some(&mut gb[..br.len()]),
                &dout[..b * cout],
                inp,
                &self.params[wr.clone()],
                b,
                cin,
                cout,
            );
            cur = 1 - cur;
            hook(&self.grads, &self.buckets[n - 1 - i])?;
        }
        Ok(())
    }
}

impl Model for Mlp {
    fn params(&self) -> &[f32] {
        &self.params
    }
    fn params_mut(&mut self) -> &mut [f32] {
        &mut self.params
    }
    fn grads(&self) -> &[f32] {
        &self.grads
    }
    fn grads_mut(&mut self) -> &mut [f32] {
        &mut self.grads
    }
    fn params_and_grads(&mut self) -> (&mut [f32], &[f32]) {
        (&mut self.params, &self.grads)
    }
    fn param_groups(&self) -> Vec<ParamGroup> {
        self.layers
            .iter()
            .flat_map(|(w, b)| {
                [
                    ParamGroup {
                        name: "weight",
                        range: w.clone(),
                        is_matrix: true,
                    },
                    ParamGroup {
                        name: "bias",
                        range: b.clone(),
                        is_matrix: false,
                    },
                ]
            })
            .collect()
    }
    /// `layers.{i}.weight` `[out, in]` (`nn.Linear`'s orientation) and `layers.{i}.bias`
    /// `[out]`, input side first; each layer's weight is followed by its bias in the buffer.
    fn tensors(&self) -> Vec<TensorInfo> {
        let dims = self.cfg.dims();
        self.layers
            .iter()
            .enumerate()
            .flat_map(|(i, (w, b))| {
                [
                    TensorInfo {
                        name: format!("layers.{i}.weight"),
                        shape: vec![dims[i + 1], dims[i]],
                        offset: w.start,
                    },
                    TensorInfo {
                        name: format!("layers.{i}.bias"),
                        shape: vec![dims[i + 1]],
                        offset: b.start,
                    },
                ]
            })
            .collect()
    }
    fn grad_buckets(&self) -> Vec<Bucket> {
        self.buckets.clone()
    }
    fn fingerprint(&self) -> String {
        let c = &self.cfg;
        format!(
            "mlp(inputs={}, hidden={:?}, classes={}, activation={:?}, loss={:?})",
            c.inputs, c.hidden, c.classes, c.activation, c.loss
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensors_tile_the_buffer() {
        for hidden in [vec![], vec![7], vec![7, 6]] {
            let m = Mlp::new(
                MlpConfig {
                    inputs: 5,
                    hidden: hidden.clone(),
                    classes: 4,
                    activation: Activation::Relu,
                    loss: LossKind::CrossEntropy,
                },
                1,
            );
            let tensors = m.tensors();
            crate::model::assert_tiles(&tensors, m.params().len());
            assert_eq!(tensors.len(), 2 * (hidden.len() + 1));
            assert_eq!(tensors[0].name, "layers.0.weight");
            assert_eq!(tensors[0].shape, [hidden.first().copied().unwrap_or(4), 5]);
            let last = &tensors[tensors.len() - 1];
            assert_eq!(last.shape, [4]);
            assert!(last.name.ends_with(".bias"));
        }
    }

    /// The analytic gradient of every parameter against central finite differences of the
    /// mean loss, for each activation and loss (tolerance: 2e-3 absolute + 2% relative, as the
    /// differences are taken in f32 with step 1e-2).
    #[test]
    fn gradients_match_finite_differences() {
        for act in [Activation::Tanh, Activation::Sigmoid, Activation::Relu] {
            for lk in [LossKind::CrossEntropy, LossKind::Mse] {
                let cfg = MlpConfig {
                    inputs: 5,
                    hidden: vec![7, 6],
                    classes: 4,
                    activation: act,
                    loss: lk,
                };
                let mut m = Mlp::new(cfg, 3);
                let mut rng = ChaCha8Rng::seed_from_u64(9);
                let b = 3;
                let x: Vec<f32> = (0..b * 5).map(|_| rng.random_range(-1.0..1.0)).collect();
                let y = vec![0u32, 3, 1];
                let mean_loss = |m: &mut Mlp| {
                    m.forward(&x, b);
                    let (s, n) = m.loss(&y, None);
                    s / n as f64
                };
                m.forward(&x, b);
                m.loss(&y, Some(1.0));
                m.grads_mut().fill(0.0);
                m.backward(&x, &mut |_, _| Ok(())).unwrap();
                let analytic = m.grads().to_vec();
                for i in (0..m.params().len()).step_by(3) {
                    let orig = m.params()[i];
                    let h = 1e-3f32;
                    m.params_mut()[i] = orig + h;
                    let lp = mean_loss(&mut m);
                    m.params_mut()[i] = orig - h;
                    let lm = mean_loss(&mut m);
                    m.params_mut()[i] = orig;
                    let numeric = ((lp - lm) / (2.0 * h as f64)) as f32;
                    let err = (numeric - analytic[i]).abs();
                    assert!(
                        err <= 2e-3 + 0.02 * numeric.abs(),
                        "{act:?}/{lk:?} param {i}: analytic {} numeric {numeric}",
                        analytic[i]
                    );
                }
            }
        }
    }
}
