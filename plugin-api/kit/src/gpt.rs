//! The two built-in baselines, built from the same parts.
//!
//! `arch=gpt2` ("GPT2ish", from lmplay, itself nanoGPT's GPT-2): token embedding + learned
//! absolute position embedding (initialised to zero) → L pre-LN blocks of
//! `x += Attn(LN1(x)); x += MLP(LN2(x))` → final LN → untied linear head with bias. Attention:
//! one fused q/k/v projection and an output projection, with biases; causal scaled dot product.
//! MLP: C → 4C → C with exact (erf) GELU. LayerNorm eps 1e-5.
//!
//! `arch=llama` (Transformer++, as in Llama and the Mamba paper's baseline): the same pre-norm
//! block with RMSNorm (eps 1e-5, a gain and no bias) in place of LayerNorm, rotary position
//! embeddings on q and k (RoFormer, θ = 10000, Hugging Face's rotate-half pairing) in place of
//! the position table, no biases anywhere, and a SwiGLU MLP `W2 · (SiLU(W1 x) ⊙ (W3 x))` of hidden
//! width ⌈8C/3⌉ rounded up to a multiple of 64 (Llama's rule: the parameters of a 4C MLP); final
//! RMSNorm, untied head without bias.
//!
//! Both: weights N(0, 0.02); the two projections into the residual stream N(0, 0.02/√(2L))
//! (GPT-2 paper, §2.3).
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
use crate::nn::{self, RmsNorm};
use crate::parts::{
    Attention, Block, Dense, DenseSpec, FeedForward, KvCache, LayerCache, Named, Norm, Positions, Recipe,
    TokenEmbedding,
};

crate::knob_enum! {
    /// Which baseline the parts are put together as.
    pub enum Arch {
        /// GPT-2's: LayerNorm, learned absolute positions, GELU MLP, biases.
        Gpt2 = "gpt2",
        /// Transformer++ (Llama's): RMSNorm, rotary positions, SwiGLU MLP, no biases.
        Llama = "llama",
    }
}

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
        /// gpt2 (LayerNorm, learned positions, GELU MLP, biases) or llama (RMSNorm, RoPE, SwiGLU, no biases).
        pub arch: Arch = Arch::Gpt2,
        /// Transformer blocks (L).
        pub n_layer: usize = 4,
        /// Residual stream width (C); must divide by n_head.
        pub n_embd: usize = 256,
        /// Attention heads (H).
        pub n_head: usize = 4,
        /// Standard deviation of the N(0, σ) weight initialisation.
        pub init_std: f64 = 0.02,
        /// erf (exact, the baseline) or tanh (GPT-2's approximation); gpt2 arch.
        pub gelu: GeluKind = GeluKind::Erf,
        /// The head reuses the token embedding's table, as GPT-2's does.
        pub tied_head: bool = false,
        /// A bias on the head (the gpt2 baseline); GPT-2's own head and the llama arch's have none.
        pub head_bias: bool = true,
        /// The MLP's hidden width; 0 is the arch's rule (4C; SwiGLU's ⌈8C/3⌉ rounded up to 64).
        pub mlp_width: usize = 0,
        /// eps of the block and final norms.
        pub norm_eps: f64 = 1e-5,
        /// The base θ of the rotary embeddings (llama arch).
        pub rope_theta: f64 = 10_000.0,
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

    /// Whether the arch's dense layers and norms have biases (gpt2's do, llama's do not).
    pub fn biases(&self) -> bool {
        self.gpt.arch == Arch::Gpt2
    }

    /// The head's bias: `head_bias` in the gpt2 arch, none in the llama arch.
    pub fn head_bias(&self) -> bool {
        self.biases() && self.gpt.head_bias
    }

    /// The arch's position encoding: a learned table (gpt2), rotary (llama).
    pub fn positions(&self) -> Positions {
        match self.gpt.arch {
            Arch::Gpt2 => Positions::Learned,
            Arch::Llama => Positions::Rotary { base: self.gpt.rope_theta },
        }
    }

    /// The MLP's hidden width: `mlp_width`, else 4C (gpt2) or ⌈8C/3⌉ rounded up to a multiple
    /// of 64 (llama: SwiGLU's three matrices then hold about the parameters of a 4C MLP's two).
    pub fn mlp_width(&self) -> usize {
        let c = self.gpt.n_embd;
        match (self.gpt.mlp_width, self.gpt.arch) {
            (0, Arch::Gpt2) => 4 * c,
            (0, Arch::Llama) => (8 * c).div_ceil(3).div_ceil(64) * 64,
            (width, _) => width,
        }
    }

    pub fn check(&self) -> Result<()> {
        self.gpt.check()?;
        if matches!(self.positions(), Positions::Rotary { .. }) && !self.head_size().is_multiple_of(2) {
            candle_core::bail!(
                "rotary positions need an even head size; n_embd / n_head is {}",
                self.head_size()
            );
        }
        Ok(())
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

/// Causal self-attention with one fused q/k/v projection, and rotary positions on q and k when
/// the model's [`Positions`] are rotary.
pub struct CausalSelfAttention {
    pub c_attn: Box<dyn Dense>,
    pub c_proj: Box<dyn Dense>,
    pub n_head: usize,
    /// 1/√D.
    pub scale: f64,
    /// RoPE's base θ when q and k are rotated.
    pub rotary: Option<f64>,
}

impl CausalSelfAttention {
    pub fn new<R: Recipe + ?Sized>(recipe: &R, spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let (c, std, bias) = (spec.gpt.n_embd, spec.gpt.init_std, spec.biases());
        Ok(Self {
            c_attn: recipe.dense(spec.dense(c, 3 * c, std, bias), vb.pp("c_attn"))?,
            c_proj: recipe.dense(spec.dense(c, c, spec.residual_std(), bias), vb.pp("c_proj"))?,
            n_head: spec.gpt.n_head,
            scale: 1.0 / (spec.head_size() as f64).sqrt(),
            rotary: recipe.positions(spec).rotary_base(),
        })
    }

    /// x: (B, T, C) → q, k, v: (B, H, T, D) each, contiguous, before any rotation.
    pub fn qkv(&self, x: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let c = x.dim(2)?;
        let qkv = self.c_attn.forward(x)?; // (B, T, 3C)
        let q = nn::split_heads(&qkv.narrow(2, 0, c)?, self.n_head)?;
        let k = nn::split_heads(&qkv.narrow(2, c, c)?, self.n_head)?;
        let v = nn::split_heads(&qkv.narrow(2, 2 * c, c)?, self.n_head)?;
        Ok((q, k, v))
    }

    /// q and k (B, H, T, D) of positions `offset..offset + T` rotated, when positions are rotary.
    pub fn rotate(&self, q: &Tensor, k: &Tensor, offset: usize) -> Result<(Tensor, Tensor)> {
        match self.rotary {
            Some(base) => Ok((kernels::rope(q, offset, base)?, kernels::rope(k, offset, base)?)),
            None => Ok((q.clone(), k.clone())),
        }
    }

    /// `softmax(q kᵀ/√D + mask) v` of the new positions: q and k rotated to their positions
    /// (after the cached ones), the keys and values appended to `cache` when there is one, then
    /// the heads merged and projected: (B, H, T, D) → (B, T, C). Without a cache this is the
    /// fused kernel, whatever the experiment did to q, k and v before.
    pub fn attend(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: Option<&mut LayerCache>,
    ) -> Result<Tensor> {
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let (q, k) = self.rotate(q, k, offset)?;
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, v)?,
            None => (k, v.clone()),
        };
        self.project(&nn::causal_attention(&q, &k, &v, self.scale)?)
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
            None => {
                let mut qkv = self.c_attn.forward(x)?;
                if let Some(base) = self.rotary {
                    qkv = kernels::rope_qkv(&qkv, self.n_head, 0, base)?;
                }
                self.project_merged(&kernels::causal_self_attention(&qkv, self.n_head, self.scale)?)
            }
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

/// The baseline's attention with RMSNorm on q and k over each head's D dimensions (one gain of
/// D for all heads, for each), before the rotation and the scores: the speedrun's QK-norm and the
/// OP block's (Henry et al. 2020; Dehghani et al. 2023).
pub struct QkNormAttention {
    pub attn: CausalSelfAttention,
    pub q_norm: RmsNorm,
    pub k_norm: RmsNorm,
}

impl QkNormAttention {
    /// The gains are `<vb>.q_norm.weight` and `<vb>.k_norm.weight`.
    pub fn new<R: Recipe + ?Sized>(recipe: &R, spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let (d, eps) = (spec.head_size(), spec.gpt.norm_eps);
        Ok(Self {
            attn: CausalSelfAttention::new(recipe, spec, vb.clone())?,
            q_norm: RmsNorm::new(d, eps, vb.pp("q_norm"))?,
            k_norm: RmsNorm::new(d, eps, vb.pp("k_norm"))?,
        })
    }
}

impl Attention for QkNormAttention {
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (q, k, v) = self.attn.qkv(x)?; // (B, H, T, D)
        self.attn.attend(&self.q_norm.forward(&q)?, &self.k_norm.forward(&k)?, &v, cache)
    }
}

crate::knob_enum! {
    /// The activation of a two-matrix MLP.
    pub enum Activation {
        /// Exact GELU, x·Φ(x).
        GeluErf = "gelu",
        /// GPT-2's tanh GELU.
        GeluTanh = "gelu-tanh",
        Relu = "relu",
        /// relu(x)² (So et al. 2021, "Primer"; modded-nanogpt).
        ReluSquared = "relu2",
    }
}

/// C → W → activation → C (W = 4C in the gpt2 arch).
pub struct Mlp {
    pub c_fc: Box<dyn Dense>,
    pub c_proj: Box<dyn Dense>,
    pub activation: Activation,
}

impl Mlp {
    /// The gpt2 arch's MLP: GELU as `gelu` says.
    pub fn new<R: Recipe + ?Sized>(recipe: &R, spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let activation = match spec.gpt.gelu {
            GeluKind::Erf => Activation::GeluErf,
            GeluKind::Tanh => Activation::GeluTanh,
        };
        Self::with_activation(recipe, spec, activation, vb)
    }

    /// The same shapes (hidden width [`ModelSpec::mlp_width`]) with another activation.
    pub fn with_activation<R: Recipe + ?Sized>(
        recipe: &R,
        spec: &ModelSpec,
        activation: Activation,
        vb: VarBuilder,
    ) -> Result<Self> {
        let (c, w, bias) = (spec.gpt.n_embd, spec.mlp_width(), spec.biases());
        Ok(Self {
            c_fc: recipe.dense(spec.dense(c, w, spec.gpt.init_std, bias), vb.pp("c_fc"))?,
            c_proj: recipe.dense(spec.dense(w, c, spec.residual_std(), bias), vb.pp("c_proj"))?,
            activation,
        })
    }
}

impl FeedForward for Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.c_fc.forward(x)?;
        let h = match self.activation {
            Activation::GeluErf => nn::gelu(&h)?,
            Activation::GeluTanh => h.gelu()?, // candle's `gelu` is the tanh form
            Activation::Relu => h.relu()?,
            Activation::ReluSquared => h.relu()?.sqr()?,
        };
        self.c_proj.forward(&h)
    }

    fn prod(&self) -> Result<Named> {
        Ok([self.c_fc.prod()?, self.c_proj.prod()?].concat())
    }
}

/// SwiGLU (Shazeer 2020, eq. 6): `c_proj(SiLU(c_gate x) ⊙ c_fc x)`, hidden width
/// [`ModelSpec::mlp_width`]; Hugging Face's Llama names them `gate_proj`, `up_proj`, `down_proj`.
pub struct SwiGlu {
    pub c_gate: Box<dyn Dense>,
    pub c_fc: Box<dyn Dense>,
    pub c_proj: Box<dyn Dense>,
}

impl SwiGlu {
    pub fn new<R: Recipe + ?Sized>(recipe: &R, spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let (c, w, bias, std) = (spec.gpt.n_embd, spec.mlp_width(), spec.biases(), spec.gpt.init_std);
        Ok(Self {
            c_gate: recipe.dense(spec.dense(c, w, std, bias), vb.pp("c_gate"))?,
            c_fc: recipe.dense(spec.dense(c, w, std, bias), vb.pp("c_fc"))?,
            c_proj: recipe.dense(spec.dense(w, c, spec.residual_std(), bias), vb.pp("c_proj"))?,
        })
    }
}

impl FeedForward for SwiGlu {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(&kernels::swiglu(&self.c_gate.forward(x)?, &self.c_fc.forward(x)?)?)
    }

    fn prod(&self) -> Result<Named> {
        Ok([self.c_gate.prod()?, self.c_fc.prod()?, self.c_proj.prod()?].concat())
    }
}

/// Pre-norm block: `x += Attn(N1(x)); x += MLP(N2(x))` (the norms LayerNorm or RMSNorm, the
/// MLP GELU or SwiGLU, as the arch or the recipe has them).
pub struct PreLnBlock {
    pub ln_1: Box<dyn Norm>,
    pub attn: Box<dyn Attention>,
    pub ln_2: Box<dyn Norm>,
    pub mlp: Box<dyn FeedForward>,
}

impl PreLnBlock {
    pub fn new<R: Recipe + ?Sized>(
        recipe: &R,
        layer: usize,
        spec: &ModelSpec,
        vb: VarBuilder,
    ) -> Result<Self> {
        Ok(Self {
            ln_1: recipe.norm(spec, vb.pp("ln_1"))?,
            attn: recipe.attention(layer, spec, vb.pp("attn"))?,
            ln_2: recipe.norm(spec, vb.pp("ln_2"))?,
            mlp: recipe.mlp(layer, spec, vb.pp("mlp"))?,
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
    /// The learned position table, when the positions are [`Positions::Learned`].
    pub wpe: Option<nn::Embedding>,
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
        let head = spec.dense(c, spec.vocab_size, spec.gpt.init_std, spec.head_bias());
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
            wpe: match recipe.positions(spec) {
                Positions::Learned => Some(nn::embedding(spec.context_length, c, 0.0, t.pp("wpe"))?), // zero: lmplay
                Positions::Rotary { .. } | Positions::None => None,
            },
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
        let mut x = self.wte.forward(ids)?; // (B, T, C)
        if let Some(wpe) = &self.wpe {
            x = x.broadcast_add(&wpe.table.narrow(0, offset, ids.dim(1)?)?)?; // + (T, C)
        }
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
        if let Some(wpe) = &self.wpe {
            out.push((format!("{}.weight", wpe.name), wpe.table.clone()));
        }
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
