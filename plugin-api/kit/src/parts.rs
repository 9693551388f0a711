//! The replaceable parts of the baseline GPT. An experiment implements [`Recipe`], overriding the
//! one part its idea changes (the dense layers for UW1, the token embedding for UE, the attention
//! for value norm, the MLP for ReLU², the position encoding, the norms, the whole block for
//! simplified blocks); every other part stays the baseline's, built by the same code, in either
//! arch (`arch=gpt2|llama` picks the parts the defaults build).
//!
//! Each part can say what it is in the baseline's layout ([`prod`](Dense::prod)): that is how a
//! sacrificial experiment exports weights the plain baseline loads.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use crate::gpt::{Arch, CausalSelfAttention, Mlp, ModelSpec, PreLnBlock, SwiGlu};
use crate::nn;

/// The shape of one dense layer of the baseline.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DenseSpec {
    pub in_dim: usize,
    pub out_dim: usize,
    /// σ of the baseline's N(0, σ) weight initialisation.
    pub std: f64,
    pub bias: bool,
    /// The dtype the product runs in (bf16 under mixed precision; its weights are then a bf16
    /// copy of f32 masters).
    pub dtype: candle_core::DType,
}

/// A named tensor of a prod model.
pub type Named = Vec<(String, Tensor)>;

fn not_sacrificial<T>() -> Result<T> {
    candle_core::bail!("this part has no form in the baseline's layout (the experiment is not sacrificial)")
}

/// A dense layer `(…, in) → (…, out)`.
pub trait Dense: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// The layer as the baseline's `<path>.weight` and `<path>.bias`.
    fn prod(&self) -> Result<Named> {
        not_sacrificial()
    }
}

/// The token embedding, `ids (B, T) → (B, T, C)`.
pub trait TokenEmbedding: Send + Sync {
    fn forward(&self, ids: &Tensor) -> Result<Tensor>;
    /// The embedding as the baseline's `transformer.wte.weight` table.
    fn prod(&self) -> Result<Named> {
        not_sacrificial()
    }
    /// The (V, C) table itself, when the embedding is one (a tied head multiplies by it).
    fn table(&self) -> Option<Tensor> {
        None
    }
}

/// Self-attention of one block.
pub trait Attention: Send + Sync {
    /// x: (B, T, C) → (B, T, C). With a cache, `x` holds the positions after the cached ones,
    /// whose keys and values the call appends to the cache.
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor>;
    /// The attention as the baseline's `c_attn` and `c_proj`.
    fn prod(&self) -> Result<Named> {
        not_sacrificial()
    }
}

/// The MLP of a block: (B, T, C) → (B, T, C).
pub trait FeedForward: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// The MLP in the baseline's layout.
    fn prod(&self) -> Result<Named> {
        not_sacrificial()
    }
}

/// How the model knows where a token is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Positions {
    /// A learned (context, C) table added to the token embeddings, initialised to zero (gpt2).
    Learned,
    /// q and k rotated by their absolute position in every attention (RoFormer), base θ (llama).
    Rotary { base: f64 },
    /// No position signal but the causal mask ("NoPE").
    None,
}

impl Positions {
    /// θ when the positions are rotary.
    pub fn rotary_base(self) -> Option<f64> {
        match self {
            Positions::Rotary { base } => Some(base),
            Positions::Learned | Positions::None => None,
        }
    }
}

/// A normalisation over the last dimension (LayerNorm, RMSNorm).
pub trait Norm: Send + Sync {
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// The norm as the baseline's `<path>.weight` and `<path>.bias`.
    fn prod(&self) -> Result<Named> {
        not_sacrificial()
    }
}

/// One transformer block: (B, T, C) → (B, T, C) on the residual stream.
pub trait Block: Send + Sync {
    /// With a cache, `x` holds the positions after the cached ones (see [`Attention::forward`]).
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor>;
    fn prod(&self) -> Result<Named> {
        not_sacrificial()
    }
    /// Numbers worth logging beside the loss (learned gains, ...).
    fn metrics(&self) -> Result<Vec<(String, f64)>> {
        Ok(Vec::new())
    }
}

/// Keys and values of the positions one block has already seen: (B, H, T_seen, D) each.
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    pub keys: Option<Tensor>,
    pub values: Option<Tensor>,
}

impl LayerCache {
    /// Positions cached so far.
    pub fn len(&self) -> usize {
        self.keys.as_ref().and_then(|k| k.dim(2).ok()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the new positions' keys and values; returns all of them.
    pub fn append(&mut self, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let cat = |old: &Option<Tensor>, new: &Tensor| match old {
            Some(old) => Tensor::cat(&[old, new], 2),
            None => Ok(new.clone()),
        };
        let (k, v) = (cat(&self.keys, k)?, cat(&self.values, v)?);
        self.keys = Some(k.clone());
        self.values = Some(v.clone());
        Ok((k, v))
    }
}

/// Every block's [`LayerCache`], and how many positions they hold.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    pub layers: Vec<LayerCache>,
    pub len: usize,
}

/// Which parts of the baseline an experiment replaces; each method builds the baseline's part
/// unless overridden. `vb` is already scoped to the part's name in the baseline
/// (e.g. `transformer.h.3.mlp.c_fc`), so a replacement that keeps the name keeps its place.
pub trait Recipe {
    /// Every dense layer: attention `c_attn`/`c_proj`, MLP `c_fc`/`c_proj`, and `lm_head`.
    fn dense(&self, spec: DenseSpec, vb: VarBuilder) -> Result<Box<dyn Dense>> {
        Ok(Box::new(nn::dense(spec, vb)?))
    }

    /// The attention of block `layer`.
    fn attention(&self, _layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Attention>> {
        Ok(Box::new(CausalSelfAttention::new(self, spec, vb)?))
    }

    fn token_embedding(&self, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn TokenEmbedding>> {
        Ok(Box::new(nn::embedding(spec.vocab_size, spec.gpt.n_embd, spec.gpt.init_std, vb)?))
    }

    /// The MLP of block `layer`: GELU (gpt2) or SwiGLU (llama).
    fn mlp(&self, _layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn FeedForward>> {
        match spec.gpt.arch {
            Arch::Gpt2 => Ok(Box::new(Mlp::new(self, spec, vb)?)),
            Arch::Llama => Ok(Box::new(SwiGlu::new(self, spec, vb)?)),
        }
    }

    /// The position encoding: learned (gpt2) or rotary (llama). The attention rotates q and k
    /// when it is rotary; the model adds the table when it is learned.
    fn positions(&self, spec: &ModelSpec) -> Positions {
        spec.positions()
    }

    /// The block norms (and, unless [`final_norm`](Recipe::final_norm) says otherwise, the final
    /// one): LayerNorm with a bias (gpt2) or RMSNorm (llama), eps `norm_eps`.
    fn norm(&self, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Norm>> {
        let (c, eps) = (spec.gpt.n_embd, spec.gpt.norm_eps);
        match spec.gpt.arch {
            Arch::Gpt2 => Ok(Box::new(nn::LayerNorm::new(c, true, vb)?.with_eps(eps))),
            Arch::Llama => Ok(Box::new(nn::RmsNorm::new(c, eps, vb)?)),
        }
    }

    /// Block `layer` (the attention, MLP and norms inside come from the methods above).
    fn block(&self, layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Block>> {
        Ok(Box::new(PreLnBlock::new(self, layer, spec, vb)?))
    }

    /// A norm on the summed token and position embeddings; the baseline has none.
    fn embedding_norm(&self, _spec: &ModelSpec, _vb: VarBuilder) -> Result<Option<Box<dyn Norm>>> {
        Ok(None)
    }

    /// The norm before the head.
    fn final_norm(&self, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Norm>> {
        self.norm(spec, vb)
    }
}

/// The baseline: every part as it is.
pub struct BaselineParts;

impl Recipe for BaselineParts {}
