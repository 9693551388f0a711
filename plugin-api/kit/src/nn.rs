//! Layers shared by the baseline and the plugins, each with an explicit, seeded initialisation
//! and a backward pass that reaches every parameter.
//!
//! Shapes: `B` batch, `T` time, `C` width, `H` heads, `D = C/H` head size, `V` vocab.

use candle_core::{DType, Result, Tensor};
use candle_nn::{Init, VarBuilder};

use crate::kernels;
use crate::parts::{Dense, DenseSpec, Named, Norm, TokenEmbedding};

/// `y = x Wᵀ + b`, `W: (out, in)`.
#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    /// Where it sits in the model, e.g. `transformer.h.0.mlp.c_fc`.
    pub name: String,
}

impl Linear {
    /// x: (..., in) → (..., out), as one (N, in) × (in, out) matmul with the bias, in the
    /// weight's dtype (x is cast to it: bf16 under mixed precision).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut dims = x.dims().to_vec();
        let in_dim = dims.pop().unwrap_or(1);
        let x = x.to_dtype(self.weight.dtype())?;
        let y = kernels::linear(&x.reshape(((), in_dim))?, &self.weight, self.bias.as_ref())?;
        dims.push(self.weight.dim(0)?);
        y.reshape(dims)
    }
}

impl Dense for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Linear::forward(self, x)
    }

    fn prod(&self) -> Result<Named> {
        Ok(weight_and_bias(&self.name, &self.weight, self.bias.as_ref()))
    }
}

/// `<name>.weight` and, when there is one, `<name>.bias`.
pub fn weight_and_bias(name: &str, weight: &Tensor, bias: Option<&Tensor>) -> Named {
    let mut out = vec![(format!("{name}.weight"), weight.clone())];
    if let Some(b) = bias {
        out.push((format!("{name}.bias"), b.clone()));
    }
    out
}

/// A [`Linear`] with `W` drawn from N(0, std) and `b` zero, multiplying in f32.
pub fn linear(in_dim: usize, out_dim: usize, std: f64, bias: bool, vb: VarBuilder) -> Result<Linear> {
    dense(DenseSpec { in_dim, out_dim, std, bias, dtype: DType::F32 }, vb)
}

/// The [`Linear`] a [`DenseSpec`] describes: W drawn from N(0, std), b zero, both computed in
/// the spec's dtype (a bf16 copy of f32 masters under mixed precision).
pub fn dense(spec: DenseSpec, vb: VarBuilder) -> Result<Linear> {
    let init = Init::Randn { mean: 0.0, stdev: spec.std };
    let weight = vb.get_with_hints_dtype((spec.out_dim, spec.in_dim), "weight", init, spec.dtype)?;
    let bias = match spec.bias {
        true => Some(vb.get_with_hints_dtype(spec.out_dim, "bias", Init::Const(0.0), spec.dtype)?),
        false => None,
    };
    Ok(Linear { weight, bias, name: vb.prefix() })
}

/// `x + branch`, the branch (a dense layer's bf16 output under mixed precision) added in the
/// residual stream's dtype.
pub fn residual(x: &Tensor, branch: &Tensor) -> Result<Tensor> {
    x + branch.to_dtype(x.dtype())?
}

/// A lookup table `(n, C)`: row `i` is the vector of id `i`.
#[derive(Clone, Debug)]
pub struct Embedding {
    pub table: Tensor,
    pub name: String,
}

impl Embedding {
    /// ids: (...) u32 → (..., C).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let mut dims = ids.dims().to_vec();
        dims.push(self.table.dim(1)?);
        self.table.index_select(&ids.flatten_all()?, 0)?.reshape(dims)
    }
}

impl TokenEmbedding for Embedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        Embedding::forward(self, ids)
    }

    fn prod(&self) -> Result<Named> {
        Ok(vec![(format!("{}.weight", self.name), self.table.clone())])
    }

    fn table(&self) -> Option<Tensor> {
        Some(self.table.clone())
    }
}

/// An [`Embedding`] `(n, dim)` drawn from N(0, std); `std = 0` initialises it to zero.
pub fn embedding(n: usize, dim: usize, std: f64, vb: VarBuilder) -> Result<Embedding> {
    let init = if std == 0.0 { Init::Const(0.0) } else { Init::Randn { mean: 0.0, stdev: std } };
    Ok(Embedding { table: vb.get_with_hints((n, dim), "weight", init)?, name: vb.prefix() })
}

/// LayerNorm over the last dimension, written with plain tensor ops.
///
/// Not `candle_nn::LayerNorm`: with a bias its fused kernel has no backward and silently cuts
/// the gradient graph (candle issues #2977 and #3011).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub eps: f64,
    pub name: String,
}

impl LayerNorm {
    /// Gain 1, bias 0 (or no bias), eps 1e-5 as in GPT-2.
    pub fn new(dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(dim, "weight", Init::Const(1.0))?;
        let bias = if bias { Some(vb.get_with_hints(dim, "bias", Init::Const(0.0))?) } else { None };
        Ok(Self { weight, bias, eps: 1e-5, name: vb.prefix() })
    }

    pub fn with_eps(self, eps: f64) -> Self {
        Self { eps, ..self }
    }

    /// x: (..., C) → (..., C).
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match &self.bias {
            Some(b) => kernels::layer_norm(x, &self.weight, b, self.eps),
            None => kernels::layer_norm(x, &self.weight, &self.weight.zeros_like()?, self.eps),
        }
    }
}

impl Norm for LayerNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        LayerNorm::forward(self, x)
    }

    /// `<path>.weight` and `<path>.bias`, as the baseline names them.
    fn prod(&self) -> Result<Named> {
        Ok(weight_and_bias(&self.name, &self.weight, self.bias.as_ref()))
    }
}

/// RMSNorm over the last dimension with a gain (Zhang & Sennrich 2019): `x / √(mean(x²) + eps) · g`,
/// computed in f32 and returned in x's dtype (as Hugging Face's `LlamaRMSNorm`), one fused op on
/// the CPU.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
    pub name: String,
}

impl RmsNorm {
    /// Gain 1.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get_with_hints(dim, "weight", Init::Const(1.0))?, eps, name: vb.prefix() })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        kernels::rms_norm(x, &self.weight, self.eps)
    }
}

impl Norm for RmsNorm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        RmsNorm::forward(self, x)
    }

    fn prod(&self) -> Result<Named> {
        Ok(vec![(format!("{}.weight", self.name), self.weight.clone())])
    }
}

/// Exact (erf) GELU.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    kernels::gelu_erf(x)
}

/// Scaled dot-product attention with a causal mask: `softmax(q kᵀ · scale + mask) v`.
/// q: (B, H, Tq, D), k and v: (B, H, Tk, D) with Tk ≥ Tq (the last Tq keys are the queries'
/// own positions) → (B, H, Tq, D). With as many keys as queries (training, evaluation, the
/// first call of a generation) this is the fused kernel [`kernels::attention`].
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let (b, h, tq, d) = q.dims4()?;
    if k.dim(2)? == tq {
        // Merged heads (B, T, C) seen as (B, H, T, D): a view, merged again without a copy.
        return kernels::attention(q, k, v, scale)?.reshape((b, tq, h, d))?.transpose(1, 2);
    }
    let scores = q.contiguous()?.matmul(&k.contiguous()?.t()?)?; // (B, H, Tq, Tk)
    kernels::causal_softmax(&scores, scale)?.matmul(&v.contiguous()?)
}

/// (B, T, C) → (B, H, T, D), contiguous.
pub fn split_heads(x: &Tensor, n_head: usize) -> Result<Tensor> {
    let (b, t, c) = x.dims3()?;
    x.reshape((b, t, n_head, c / n_head))?.transpose(1, 2)?.contiguous()
}

/// (B, H, T, D) → (B, T, C).
pub fn merge_heads(x: &Tensor) -> Result<Tensor> {
    let (b, h, t, d) = x.dims4()?;
    x.transpose(1, 2)?.reshape((b, t, h * d))
}

pub use crate::kernels::cross_entropy_sum;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::ParamStore;
    use candle_core::{DType, Device};

    #[test]
    fn layer_norm_normalises_and_trains_both_parameters() {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        let ln = LayerNorm::new(4, true, vb).unwrap();
        let x = Tensor::new(&[[1f32, 2., 3., 4.], [2., 2., 2., 6.]], &Device::Cpu).unwrap();
        let y = ln.forward(&x).unwrap();
        let row: Vec<f32> = y.get(0).unwrap().to_vec1().unwrap();
        // (x - 2.5) / sqrt(1.25 + 1e-5)
        let expect = [-1.341_636_f32, -0.447_212, 0.447_212, 1.341_636];
        for (a, b) in row.iter().zip(expect) {
            assert!((a - b).abs() < 1e-5, "{row:?}");
        }
        let loss = (y * Tensor::new(&[[1f32, 2., 3., 4.], [1., 0., 0., 1.]], &Device::Cpu).unwrap())
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        for p in store.params() {
            let g = grads.get(p.var.as_tensor()).expect(&p.name);
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm > 0.0, "{} has no gradient", p.name);
        }
    }

    #[test]
    fn attention_is_causal() {
        // Changing a later token must not change earlier outputs.
        let dev = Device::Cpu;
        let q = Tensor::arange(0f32, 24., &dev).unwrap().reshape((1, 1, 6, 4)).unwrap();
        let q = (q / 10.0).unwrap();
        let v1 = Tensor::ones((1, 1, 6, 4), DType::F32, &dev).unwrap();
        let y1 = causal_attention(&q, &q, &q, 0.5).unwrap();
        let mut later = q.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        later[20..].fill(9.0); // the last of the 6 positions
        let q2 = Tensor::from_vec(later, (1, 1, 6, 4), &dev).unwrap();
        let y2 = causal_attention(&q2, &q2, &q2, 0.5).unwrap();
        let a = y1.narrow(2, 0, 5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = y2.narrow(2, 0, 5).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(a, b);
        // Attention weights sum to one: attending over all-ones values gives ones.
        let y = causal_attention(&q, &q, &v1, 0.5).unwrap();
        for x in y.flatten_all().unwrap().to_vec1::<f32>().unwrap() {
            assert!((x - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn cross_entropy_matches_a_hand_computation() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[0f32, 1., 2.], [3., 0., 0.]], &dev).unwrap();
        let targets = Tensor::new(&[2u32, 1], &dev).unwrap();
        let (loss, correct) = cross_entropy_sum(&logits, &targets).unwrap();
        let lse1 = (1f64 + 1f64.exp() + 2f64.exp()).ln();
        let lse2 = (3f64.exp() + 2.0).ln();
        let expect = (lse1 - 2.0) + (lse2 - 0.0);
        assert!((loss.to_scalar::<f32>().unwrap() as f64 - expect).abs() < 1e-5);
        assert_eq!(correct.to_scalar::<f32>().unwrap(), 1.0);
    }
}
