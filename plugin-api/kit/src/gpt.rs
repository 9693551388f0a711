//! The baseline GPT ("GPT2ish", from lmplay, itself nanoGPT's GPT-2).
//!
//! Pre-LN: token embedding + learned absolute position embedding (initialised to zero) → L blocks
//! of `x += Attn(LN1(x)); x += MLP(LN2(x))` → final LN → untied linear head with bias. Attention:
//! one fused q/k/v projection and an output projection, with biases; causal scaled dot product.
//! MLP: C → 4C → C with exact (erf) GELU. LayerNorm eps 1e-5. Weights N(0, 0.02); the two
//! projections into the residual stream N(0, 0.02/√(2L)) (GPT-2 paper, §2.3).
//!
//! Shapes: `B` batch, `T` time, `C` width, `H` heads, `D = C/H` head size, `V` vocab, `L` layers.
//!
//! Plugins change one piece: [`Gpt::with_attention`] swaps the attention of every block, and each
//! piece is public so an experiment can reuse the rest.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::{self, LayerNorm};

crate::knobs! {
    /// The size of the model; vocabulary and context length come from the run.
    pub struct GptConfig {
        /// Transformer blocks (L).
        pub n_layer: usize = 4,
        /// Residual stream width (C); must divide by n_head.
        pub n_embd: usize = 256,
        /// Attention heads (H).
        pub n_head: usize = 4,
        /// Standard deviation of the N(0, σ) weight initialisation.
        pub init_std: f64 = 0.02,
    }
}

/// What a model is built for: its size, its vocabulary and its longest sequence.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub gpt: GptConfig,
    pub vocab_size: usize,
    pub context_length: usize,
}

impl ModelSpec {
    pub fn head_size(&self) -> usize {
        self.gpt.n_embd / self.gpt.n_head
    }

    /// σ of the projections that write into the residual stream (GPT-2 §2.3).
    pub fn residual_std(&self) -> f64 {
        self.gpt.init_std / (2.0 * self.gpt.n_layer as f64).sqrt()
    }

    pub fn check(&self) -> Result<()> {
        self.gpt.check()
    }
}

impl GptConfig {
    pub fn check(&self) -> Result<()> {
        if self.n_layer == 0 || self.n_head == 0 || self.n_embd == 0 {
            candle_core::bail!("n_layer, n_head and n_embd must be positive");
        }
        if !self.n_embd.is_multiple_of(self.n_head) {
            candle_core::bail!(
                "n_embd ({}) must divide by n_head ({})",
                self.n_embd,
                self.n_head
            );
        }
        Ok(())
    }
}

/// Causal self-attention with one fused q/k/v projection.
#[derive(Clone, Debug)]
pub struct CausalSelfAttention {
    pub c_attn: nn::Linear,
    pub c_proj: nn::Linear,
    pub n_head: usize,
    /// 1/√D.
    pub scale: f64,
}

impl CausalSelfAttention {
    pub fn new(spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let c = spec.gpt.n_embd;
        Ok(Self {
            c_attn: nn::linear(c, 3 * c, spec.gpt.init_std, true, vb.pp("c_attn"))?,
            c_proj: nn::linear(c, c, spec.residual_std(), true, vb.pp("c_proj"))?,
            n_head: spec.gpt.n_head,
            scale: 1.0 / (spec.head_size() as f64).sqrt(),
        })
    }

    /// x: (B, T, C) → q, k, v: (B, H, T, D) each.
    pub fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let c = x.dim(2)?;
        let qkv = self.c_attn.forward(x)?; // (B, T, 3C)
        let q = nn::split_heads(&qkv.narrow(2, 0, c)?, self.n_head)?;
        let k = nn::split_heads(&qkv.narrow(2, c, c)?, self.n_head)?;
        let v = nn::split_heads(&qkv.narrow(2, 2 * c, c)?, self.n_head)?;
        Ok((q, k, v))
    }

    /// Heads y: (B, H, T, D) → output projection (B, T, C).
    pub fn project(&self, y: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(&nn::merge_heads(y)?)
    }
}

impl Module for CausalSelfAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.qkv(x)?;
        let y = nn::causal_attention(&q, &k, &v, self.scale)?;
        self.project(&y)
    }
}

/// C → 4C → GELU(erf) → C.
#[derive(Clone, Debug)]
pub struct Mlp {
    pub c_fc: nn::Linear,
    pub c_proj: nn::Linear,
}

impl Mlp {
    pub fn new(spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let c = spec.gpt.n_embd;
        Ok(Self {
            c_fc: nn::linear(c, 4 * c, spec.gpt.init_std, true, vb.pp("c_fc"))?,
            c_proj: nn::linear(4 * c, c, spec.residual_std(), true, vb.pp("c_proj"))?,
        })
    }
}

impl Module for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(&nn::gelu(&self.c_fc.forward(x)?)?)
    }
}

/// Pre-LN block: `x += Attn(LN1(x)); x += MLP(LN2(x))`.
#[derive(Clone, Debug)]
pub struct Block<A = CausalSelfAttention> {
    pub ln_1: LayerNorm,
    pub attn: A,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl<A: Module> Module for Block<A> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = (x + self.attn.forward(&self.ln_1.forward(x)?)?)?;
        &x + self.mlp.forward(&self.ln_2.forward(&x)?)?
    }
}

/// The whole model: ids (B, T) → logits (B, T, V).
#[derive(Clone, Debug)]
pub struct Gpt<A = CausalSelfAttention> {
    pub wte: candle_nn::Embedding,
    pub wpe: candle_nn::Embedding,
    pub h: Vec<Block<A>>,
    pub ln_f: LayerNorm,
    pub lm_head: nn::Linear,
}

impl Gpt {
    pub fn new(spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        Self::with_attention(spec, vb, |_layer, vb| CausalSelfAttention::new(spec, vb))
    }
}

impl<A: Module> Gpt<A> {
    /// The baseline with `attention(layer, vb)` in place of each block's attention.
    pub fn with_attention(
        spec: &ModelSpec,
        vb: VarBuilder,
        mut attention: impl FnMut(usize, VarBuilder) -> Result<A>,
    ) -> Result<Self> {
        spec.check()?;
        let (c, std) = (spec.gpt.n_embd, spec.gpt.init_std);
        let t = vb.pp("transformer");
        let h = (0..spec.gpt.n_layer)
            .map(|i| {
                let vb = t.pp("h").pp(i);
                Ok(Block {
                    ln_1: LayerNorm::new(c, true, vb.pp("ln_1"))?,
                    attn: attention(i, vb.pp("attn"))?,
                    ln_2: LayerNorm::new(c, true, vb.pp("ln_2"))?,
                    mlp: Mlp::new(spec, vb.pp("mlp"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            wte: nn::embedding(spec.vocab_size, c, std, t.pp("wte"))?,
            wpe: nn::embedding(spec.context_length, c, 0.0, t.pp("wpe"))?, // zero: lmplay
            h,
            ln_f: LayerNorm::new(c, true, t.pp("ln_f"))?,
            lm_head: nn::linear(c, spec.vocab_size, std, true, vb.pp("lm_head"))?,
        })
    }

    /// ids: (B, T) u32 → logits: (B, T, V).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let positions = self.wpe.embeddings().narrow(0, 0, t)?; // (T, C)
        let mut x = self.wte.forward(ids)?.broadcast_add(&positions)?; // (B, T, C)
        for block in &self.h {
            x = block.forward(&x)?;
        }
        self.lm_head.forward(&self.ln_f.forward(&x)?)
    }
}
