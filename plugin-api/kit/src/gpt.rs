//! The baseline GPT ("GPT2ish", from lmplay, itself nanoGPT's GPT-2).
//!
//! Pre-LN: token embedding + learned absolute position embedding (initialised to zero) → L blocks
//! of `x += Attn(LN1(x)); x += MLP(LN2(x))` → final LN → untied linear head with bias. Attention:
//! one fused q/k/v projection and an output projection, with biases; causal scaled dot product.
//! MLP: C → 4C → C with exact (erf) GELU. LayerNorm eps 1e-5. Weights N(0, 0.02); the two
//! projections into the residual stream N(0, 0.02/√(2L)) (GPT-2 paper, §2.3).
//!
//! Three knobs give the exact GPT-2 of Hugging Face's `GPT2LMHeadModel` instead: `gelu=tanh`
//! (its `gelu_new`), `tied_head=true` (the head reuses the token embedding) and `head_bias=false`.
//!
//! Shapes: `B` batch, `T` time, `C` width, `H` heads, `D = C/H` head size, `V` vocab, `L` layers.
//!
//! Every part is built through a [`Recipe`]: the baseline's recipe builds these parts, an
//! experiment's recipe replaces one of them and keeps the rest.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use std::sync::Mutex;

use crate::kernels;
use crate::nn::{self, LayerNorm};
use crate::parts::{
    Attention, Block, Dense, DenseSpec, KvCache, LayerCache, Named, Norm, Recipe, TokenEmbedding,
};

crate::knob_enum! {
    /// Which GELU the MLP uses.
    pub enum GeluKind {
        /// Exact: x·Φ(x) (the baseline; Hugging Face's `gelu`).
        Erf = "erf",
        /// GPT-2's tanh approximation (Hugging Face's `gelu_new`).
        Tanh = "tanh",
    }
}

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
        /// erf (exact, the baseline) or tanh (GPT-2's approximation).
        pub gelu: GeluKind = GeluKind::Erf,
        /// The head reuses the token embedding's table, as GPT-2's does.
        pub tied_head: bool = false,
        /// A bias on the head (the baseline); GPT-2's head has none.
        pub head_bias: bool = true,
    }
}

/// What a model is built for: its size, its vocabulary, its longest sequence, and the dtype its
/// dense layers multiply in.
#[derive(Debug, Clone)]
pub struct ModelSpec {
    pub gpt: GptConfig,
    pub vocab_size: usize,
    pub context_length: usize,
    /// f32, or bf16 under mixed precision: the dense layers' matrix products (and their outputs)
    /// run in it; every other part computes in f32, as `torch.autocast` arranges.
    pub matmul_dtype: DType,
}

impl ModelSpec {
    /// A spec whose dense layers multiply in f32.
    pub fn new(gpt: GptConfig, vocab_size: usize, context_length: usize) -> Self {
        Self { gpt, vocab_size, context_length, matmul_dtype: DType::F32 }
    }

    /// The shape of one of the baseline's dense layers, multiplying in this spec's dtype.
    pub fn dense(&self, in_dim: usize, out_dim: usize, std: f64, bias: bool) -> DenseSpec {
        DenseSpec { in_dim, out_dim, std, bias, dtype: self.matmul_dtype }
    }

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
            candle_core::bail!("n_embd ({}) must divide by n_head ({})", self.n_embd, self.n_head);
        }
        Ok(())
    }
}

/// Causal self-attention with one fused q/k/v projection.
pub struct CausalSelfAttention {
    pub c_attn: Box<dyn Dense>,
    pub c_proj: Box<dyn Dense>,
    pub n_head: usize,
    /// 1/√D.
    pub scale: f64,
}

impl CausalSelfAttention {
    pub fn new<R: Recipe + ?Sized>(recipe: &R, spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let (c, std) = (spec.gpt.n_embd, spec.gpt.init_std);
        Ok(Self {
            c_attn: recipe.dense(spec.dense(c, 3 * c, std, true), vb.pp("c_attn"))?,
            c_proj: recipe.dense(spec.dense(c, c, spec.residual_std(), true), vb.pp("c_proj"))?,
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

    /// `softmax(q kᵀ/√D + mask) v`, the keys and values first appended to `cache` when there is
    /// one, then the heads merged and projected: (B, H, T, D) → (B, T, C).
    pub fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let (k, v) = match cache {
            Some(cache) => cache.append(k, v)?,
            None => (k.clone(), v.clone()),
        };
        self.project(&nn::causal_attention(q, &k, &v, self.scale)?)
    }

    /// Heads y: (B, H, T, D) → merged and projected: (B, T, C).
    pub fn project(&self, y: &Tensor) -> Result<Tensor> {
        self.project_merged(&nn::merge_heads(y)?)
    }

    /// Merged heads y: (B, T, C) → projected: (B, T, C).
    pub fn project_merged(&self, y: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(y)
    }

    /// `c_attn` and `c_proj` in the baseline's layout.
    pub fn prod_projections(&self) -> Result<Named> {
        Ok([self.c_attn.prod()?, self.c_proj.prod()?].concat())
    }
}

impl Attention for CausalSelfAttention {
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        match cache {
            // Training and evaluation: one fused op from the q/k/v projection to merged heads.
            None => self.project_merged(&kernels::causal_self_attention(
                &self.c_attn.forward(x)?,
                self.n_head,
                self.scale,
            )?),
            Some(cache) => {
                let (q, k, v) = self.qkv(x)?;
                self.attend(&q, &k, &v, Some(cache))
            }
        }
    }

    fn prod(&self) -> Result<Named> {
        self.prod_projections()
    }
}

/// C → 4C → GELU → C.
pub struct Mlp {
    pub c_fc: Box<dyn Dense>,
    pub c_proj: Box<dyn Dense>,
    pub gelu: GeluKind,
}

impl Mlp {
    pub fn new<R: Recipe + ?Sized>(recipe: &R, spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let c = spec.gpt.n_embd;
        Ok(Self {
            c_fc: recipe.dense(spec.dense(c, 4 * c, spec.gpt.init_std, true), vb.pp("c_fc"))?,
            c_proj: recipe.dense(spec.dense(4 * c, c, spec.residual_std(), true), vb.pp("c_proj"))?,
            gelu: spec.gpt.gelu,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.c_fc.forward(x)?;
        let h = match self.gelu {
            GeluKind::Erf => nn::gelu(&h)?,
            GeluKind::Tanh => h.gelu()?, // candle's `gelu` is the tanh form
        };
        self.c_proj.forward(&h)
    }

    pub fn prod(&self) -> Result<Named> {
        Ok([self.c_fc.prod()?, self.c_proj.prod()?].concat())
    }
}

/// Pre-LN block: `x += Attn(LN1(x)); x += MLP(LN2(x))`.
pub struct PreLnBlock {
    pub ln_1: LayerNorm,
    pub attn: Box<dyn Attention>,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

impl PreLnBlock {
    pub fn new<R: Recipe + ?Sized>(
        recipe: &R,
        layer: usize,
        spec: &ModelSpec,
        vb: VarBuilder,
    ) -> Result<Self> {
        let c = spec.gpt.n_embd;
        Ok(Self {
            ln_1: LayerNorm::new(c, true, vb.pp("ln_1"))?,
            attn: recipe.attention(layer, spec, vb.pp("attn"))?,
            ln_2: LayerNorm::new(c, true, vb.pp("ln_2"))?,
            mlp: Mlp::new(recipe, spec, vb.pp("mlp"))?,
        })
    }
}

impl Block for PreLnBlock {
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let x = nn::residual(x, &self.attn.forward(&self.ln_1.forward(x)?, cache)?)?;
        nn::residual(&x, &self.mlp.forward(&self.ln_2.forward(&x)?)?)
    }

    fn prod(&self) -> Result<Named> {
        Ok([self.ln_1.prod()?, self.attn.prod()?, self.ln_2.prod()?, self.mlp.prod()?].concat())
    }
}

/// The whole model: ids (B, T) → logits (B, T, V).
pub struct Gpt {
    pub wte: Box<dyn TokenEmbedding>,
    pub wpe: nn::Embedding,
    /// A norm on the summed embeddings, for blocks without pre-norms (none in the baseline).
    pub ln_emb: Option<Box<dyn Norm>>,
    pub h: Vec<Box<dyn Block>>,
    pub ln_f: Box<dyn Norm>,
    pub lm_head: Box<dyn Dense>,
    /// The residual-stream states of the next forward, when someone asked for them.
    probe: Mutex<Option<Named>>,
}

impl Gpt {
    pub fn new<R: Recipe + ?Sized>(recipe: &R, spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        spec.check()?;
        let c = spec.gpt.n_embd;
        let t = vb.pp("transformer");
        let h = (0..spec.gpt.n_layer)
            .map(|i| recipe.block(i, spec, t.pp("h").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let wte = recipe.token_embedding(spec, t.pp("wte"))?;
        let head = spec.dense(c, spec.vocab_size, spec.gpt.init_std, spec.gpt.head_bias);
        let lm_head: Box<dyn Dense> = if spec.gpt.tied_head {
            let Some(table) = wte.table() else {
                candle_core::bail!("tied_head=true needs a token embedding that is one (V, C) table");
            };
            Box::new(TiedHead::new(table, head, vb.pp("lm_head"))?)
        } else {
            recipe.dense(head, vb.pp("lm_head"))?
        };
        Ok(Self {
            wte,
            wpe: nn::embedding(spec.context_length, c, 0.0, t.pp("wpe"))?, // zero: lmplay
            ln_emb: recipe.embedding_norm(spec, t.pp("ln_emb"))?,
            h,
            ln_f: recipe.final_norm(spec, t.pp("ln_f"))?,
            lm_head,
            probe: Mutex::new(None),
        })
    }

    /// ids: (B, T) u32 → logits: (B, T, V).
    pub fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.run(ids, 0, None)
    }

    /// Logits of new positions after the `cache.len` cached ones, extending the cache.
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        cache.layers.resize_with(self.h.len(), LayerCache::default);
        let logits = self.run(ids, cache.len, Some(&mut cache.layers))?;
        cache.len += ids.dim(1)?;
        Ok(logits)
    }

    fn run(&self, ids: &Tensor, offset: usize, mut caches: Option<&mut Vec<LayerCache>>) -> Result<Tensor> {
        let t = ids.dim(1)?;
        let positions = self.wpe.table.narrow(0, offset, t)?; // (T, C)
        let mut x = self.wte.forward(ids)?.broadcast_add(&positions)?; // (B, T, C)
        if let Some(norm) = &self.ln_emb {
            x = norm.forward(&x)?;
        }
        for (i, block) in self.h.iter().enumerate() {
            self.record(|| format!("block{i}_in"), &x);
            x = block.forward(&x, caches.as_mut().map(|c| &mut c[i]))?;
        }
        let x = self.ln_f.forward(&x)?;
        self.record(|| "final".into(), &x);
        self.lm_head.forward(&x)
    }

    /// Records the states of the residual stream (each block's input, the final normed output)
    /// during the next forward pass; [`take_residuals`](Self::take_residuals) returns them.
    pub fn probe_residuals(&self) {
        *self.probe.lock().expect("probe lock") = Some(Vec::new());
    }

    pub fn take_residuals(&self) -> Option<Named> {
        self.probe.lock().expect("probe lock").take()
    }

    fn record(&self, name: impl FnOnce() -> String, x: &Tensor) {
        if let Some(states) = self.probe.lock().expect("probe lock").as_mut() {
            states.push((name(), x.detach()));
        }
    }

    /// Every block's own numbers (learned gains, ...), named by block.
    pub fn metrics(&self) -> Result<Vec<(String, f64)>> {
        let mut out = Vec::new();
        for (i, block) in self.h.iter().enumerate() {
            out.extend(block.metrics()?.into_iter().map(|(n, v)| (format!("h{i}.{n}"), v)));
        }
        Ok(out)
    }

    /// Every weight in the baseline's layout and names: what a sacrificial experiment ships.
    pub fn prod(&self) -> Result<Named> {
        let mut out = self.wte.prod()?;
        out.push((format!("{}.weight", self.wpe.name), self.wpe.table.clone()));
        if let Some(norm) = &self.ln_emb {
            out.extend(norm.prod()?);
        }
        for block in &self.h {
            out.extend(block.prod()?);
        }
        out.extend(self.ln_f.prod()?);
        out.extend(self.lm_head.prod()?);
        Ok(out)
    }
}

/// GPT-2's head: logits = x Eᵀ (+ b) with E the token embedding's (V, C) table, so the one
/// parameter gets the gradients of both uses (Press & Wolf 2017, "Using the Output Embedding").
pub struct TiedHead {
    table: Tensor,
    bias: Option<Tensor>,
    /// The dtype the product runs in: the f32 table is cast to it at each use.
    dtype: DType,
    name: String,
}

impl TiedHead {
    pub fn new(table: Tensor, spec: DenseSpec, vb: VarBuilder) -> Result<Self> {
        let bias = if spec.bias {
            Some(vb.get_with_hints_dtype(spec.out_dim, "bias", candle_nn::Init::Const(0.0), spec.dtype)?)
        } else {
            None
        };
        Ok(Self { table, bias, dtype: spec.dtype, name: vb.prefix() })
    }
}

impl Dense for TiedHead {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let weight = self.table.to_dtype(self.dtype)?;
        nn::Linear { weight, bias: self.bias.clone(), name: self.name.clone() }.forward(x)
    }

    /// Only the bias: the weight is the token embedding's, exported once as `transformer.wte`.
    fn prod(&self) -> Result<Named> {
        Ok(self.bias.iter().map(|b| (format!("{}.bias", self.name), b.clone())).collect())
    }
}
