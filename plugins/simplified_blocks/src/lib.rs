//! Simplified transformer blocks (He & Hofmann, "Simplifying Transformer Blocks", ICLR 2024).
//!
//! One block with gains, in two forms:
//! sequential `h = βSA·Attn(N1(x)) + αSA·x;  out = βFF·MLP(N2(h)) + αFF·h`,
//! parallel   `u = N1(x);  out = βFF·MLP(u) + βSA·Attn(u) + αFF·x`.
//! As their baseline: RMSNorm (eps 1e-5), ReLU MLP, no biases except on Q and K, every weight
//! N(0, 0.02), a head without bias.
//!
//! - `pre-ln`: sequential, all gains 1 (fixed), standard attention.
//! - `parallel`: the parallel form (no separate attention skip), gains 1, standard attention.
//! - `skipless` (SAS): sequential without the attention skip (αSA = 0); βFF starts at 0.1; gains
//!   trainable; shaped attention; value and output projections are the identity (no matmul) in
//!   every layer, except layer 0's value projection `W_V = W + I` with W starting at 0.
//! - `skipless-parallel` (SAS-P): the parallel form with no skip at all (αFF = 0), otherwise as SAS.
//! - `norm=none` with any of them: no block norms; a LayerNorm on the embeddings and the final norm.
//!
//! Shaped attention, per head (their §4): `A = α·I + β·softmax(QKᵀ/√D) − γ·C`,
//! `C[i,j] = 1/(i+1)` for j ≤ i; α, β, γ start at 1 and are trained without weight decay; `W_Q`
//! starts at 0, so softmax(0) = C and every attention starts as the identity map.
//! Reported: SAS-P without norms ends ≈ 0.09 nats above Pre-LN after 40K steps, ~15 % faster per
//! second with ~15 % fewer parameters.

use lmhost_kit::prelude::*;

knob_enum! {
    /// The block's form.
    pub enum Form {
        PreLn = "pre-ln",
        Parallel = "parallel",
        Skipless = "skipless",
        SkiplessParallel = "skipless-parallel",
    }
}

knob_enum! {
    /// Norms inside the blocks.
    pub enum BlockNorm {
        Rms = "rms",
        None = "none",
    }
}

knobs! {
    /// The simplified block.
    pub struct SimplifiedConfig {
        /// pre-ln, parallel, skipless (SAS) or skipless-parallel (SAS-P).
        pub block: Form = Form::PreLn,
        /// rms (RMSNorm before attention and MLP) or none (a LayerNorm on the embeddings only).
        pub norm: BlockNorm = BlockNorm::Rms,
    }
}

impl Form {
    fn parallel(self) -> bool {
        matches!(self, Form::Parallel | Form::SkiplessParallel)
    }

    fn skipless(self) -> bool {
        matches!(self, Form::Skipless | Form::SkiplessParallel)
    }
}

/// A trainable scalar (a gain or a per-head shaping coefficient), trained without weight decay.
fn scalar(vb: &VarBuilder, name: &str, shape: usize, start: f64) -> Result<Tensor> {
    vb.get_with_hints(shape, name, Init::Const(start))
}

/// Mean of a small tensor, for logging.
fn mean(t: &Tensor) -> Result<f64> {
    Ok(f64::from(t.mean_all()?.to_scalar::<f32>()?))
}

/// Attention with biases on Q and K only; value and output projections optional (None: the
/// identity, and no matmul); shaped per head when `shape` is set.
pub struct SimplifiedAttention {
    q: Linear,
    k: Linear,
    /// `W_V` (layer 0 of SAS adds I to it).
    v: Option<(Linear, bool)>,
    o: Option<Linear>,
    /// Per-head α, β, γ: (H,) each.
    shape: Option<(Tensor, Tensor, Tensor)>,
    n_head: usize,
    scale: f64,
    /// RoPE's θ in the llama arch.
    rotary: Option<f64>,
}

impl SimplifiedAttention {
    fn new(layer: usize, form: Form, spec: &ModelSpec, positions: Positions, vb: VarBuilder) -> Result<Self> {
        let (c, h, std) = (spec.gpt.n_embd, spec.gpt.n_head, spec.gpt.init_std);
        let shaped = form.skipless();
        Ok(Self {
            // W_Q starts at 0 under shaping: softmax(0) is the uniform causal C, so A = I.
            q: nn::linear(c, c, if shaped { 0.0 } else { std }, true, vb.pp("q"))?,
            k: nn::linear(c, c, std, true, vb.pp("k"))?,
            v: match (shaped, layer) {
                (false, _) => Some((nn::linear(c, c, std, false, vb.pp("v"))?, false)),
                (true, 0) => Some((nn::linear(c, c, 0.0, false, vb.pp("v"))?, true)),
                (true, _) => None,
            },
            o: if shaped { None } else { Some(nn::linear(c, c, std, false, vb.pp("o"))?) },
            shape: if shaped {
                Some((
                    scalar(&vb, "shaped_alpha", h, 1.0)?,
                    scalar(&vb, "shaped_beta", h, 1.0)?,
                    scalar(&vb, "shaped_gamma", h, 1.0)?,
                ))
            } else {
                None
            },
            n_head: h,
            scale: 1.0 / (spec.head_size() as f64).sqrt(),
            rotary: positions.rotary_base(),
        })
    }

    /// `C` for queries at positions offset..offset+Tq over Tk keys: 1/(p+1) for j ≤ p.
    fn uniform_causal(tq: usize, tk: usize, device: &Device) -> Result<Tensor> {
        let offset = tk - tq;
        let c: Vec<f32> = (0..tq)
            .flat_map(|i| {
                let p = offset + i;
                (0..tk).map(move |j| if j <= p { 1.0 / (p + 1) as f32 } else { 0.0 })
            })
            .collect();
        Tensor::from_vec(c, (tq, tk), device)
    }
}

impl Attention for SimplifiedAttention {
    fn forward(&self, u: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let q = nn::split_heads(&self.q.forward(u)?, self.n_head)?; // (B, H, Tq, D)
        let k = nn::split_heads(&self.k.forward(u)?, self.n_head)?;
        let values = match &self.v {
            None => u.clone(), // identity: no matmul
            Some((w, false)) => w.forward(u)?,
            Some((w, true)) => (w.forward(u)? + u)?, // (W + I) u
        };
        let v = nn::split_heads(&values, self.n_head)?;
        let v_new = v.clone();
        let (q, k) = match self.rotary {
            Some(base) => {
                let offset = cache.as_ref().map_or(0, |c| c.len());
                (kernels::rope(&q, offset, base)?, kernels::rope(&k, offset, base)?)
            }
            None => (q, k),
        };
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        let (tq, tk) = (q.dim(2)?, k.dim(2)?);
        let softmax = kernels::causal_softmax(&q.matmul(&k.t()?)?, self.scale)?;
        let y = match &self.shape {
            None => softmax.matmul(&v)?,
            Some((alpha, beta, gamma)) => {
                // A·V = α·V + (β·softmax − γ·C)·V, per head; at init softmax = C exactly, so the
                // bracket is exactly 0 and A·V = V.
                let per_head = |t: &Tensor| t.reshape((1, self.n_head, 1, 1));
                let c = Self::uniform_causal(tq, tk, u.device())?;
                let mix = softmax
                    .broadcast_mul(&per_head(beta)?)?
                    .broadcast_sub(&c.broadcast_mul(&per_head(gamma)?)?)?;
                (v_new.broadcast_mul(&per_head(alpha)?)? + mix.matmul(&v)?)?
            }
        };
        let y = nn::merge_heads(&y)?;
        match &self.o {
            Some(o) => o.forward(&y),
            None => Ok(y), // identity: no matmul
        }
    }
}

/// C → 4C → ReLU → C, no biases.
struct ReluMlp {
    c_fc: Linear,
    c_proj: Linear,
}

impl ReluMlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.c_proj.forward(&self.c_fc.forward(x)?.relu()?)
    }
}

/// A gain: a fixed 1, or a trainable scalar.
enum Gain {
    One,
    Learned(Tensor),
}

impl Gain {
    fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Gain::One => Ok(x.clone()),
            Gain::Learned(g) => x.broadcast_mul(g),
        }
    }
}

pub struct SimplifiedBlock {
    form: Form,
    n1: Option<RmsNorm>,
    n2: Option<RmsNorm>,
    attn: SimplifiedAttention,
    mlp: ReluMlp,
    /// αSA, βSA, αFF, βFF; `None`: that skip is absent.
    alpha_sa: Option<Gain>,
    beta_sa: Gain,
    alpha_ff: Option<Gain>,
    beta_ff: Gain,
}

impl SimplifiedBlock {
    fn new(layer: usize, config: &SimplifiedConfig, spec: &ModelSpec, vb: VarBuilder) -> Result<Self> {
        let (c, std, form) = (spec.gpt.n_embd, spec.gpt.init_std, config.block);
        let norm = |name: &str| match config.norm {
            BlockNorm::Rms => RmsNorm::new(c, 1e-5, vb.pp(name)).map(Some),
            BlockNorm::None => Ok(None),
        };
        let gain = |name: &str, start: f64| -> Result<Gain> {
            if form.skipless() {
                Ok(Gain::Learned(scalar(&vb, name, 1, start)?))
            } else {
                Ok(Gain::One)
            }
        };
        Ok(Self {
            form,
            n1: norm("n1")?,
            n2: if form.parallel() { None } else { norm("n2")? },
            attn: SimplifiedAttention::new(layer, form, spec, config.positions(spec), vb.pp("attn"))?,
            mlp: ReluMlp {
                c_fc: nn::linear(c, 4 * c, std, false, vb.pp("mlp.c_fc"))?,
                c_proj: nn::linear(4 * c, c, std, false, vb.pp("mlp.c_proj"))?,
            },
            alpha_sa: match form {
                Form::PreLn => Some(Gain::One),
                _ => None, // parallel forms have no separate attention skip; SAS removes it
            },
            beta_sa: gain("gain_beta_sa", 1.0)?,
            alpha_ff: match form {
                Form::SkiplessParallel => None,
                _ => Some(gain("gain_alpha_ff", 1.0)?),
            },
            beta_ff: gain("gain_beta_ff", if form.skipless() { 0.1 } else { 1.0 })?,
        })
    }
}

fn normed(norm: &Option<RmsNorm>, x: &Tensor) -> Result<Tensor> {
    match norm {
        Some(n) => n.forward(x),
        None => Ok(x.clone()),
    }
}

impl Block for SimplifiedBlock {
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let skip = |gain: &Option<Gain>, x: &Tensor, branch: Tensor| -> Result<Tensor> {
            match gain {
                Some(g) => branch + g.apply(x)?,
                None => Ok(branch),
            }
        };
        if self.form.parallel() {
            let u = normed(&self.n1, x)?;
            let branches = (self.beta_ff.apply(&self.mlp.forward(&u)?)?
                + self.beta_sa.apply(&self.attn.forward(&u, cache)?)?)?;
            return skip(&self.alpha_ff, x, branches);
        }
        let h =
            skip(&self.alpha_sa, x, self.beta_sa.apply(&self.attn.forward(&normed(&self.n1, x)?, cache)?)?)?;
        skip(&self.alpha_ff, &h, self.beta_ff.apply(&self.mlp.forward(&normed(&self.n2, &h)?)?)?)
    }

    fn metrics(&self) -> Result<Vec<(String, f64)>> {
        let mut out = Vec::new();
        for (name, gain) in [
            ("beta_sa", Some(&self.beta_sa)),
            ("alpha_ff", self.alpha_ff.as_ref()),
            ("beta_ff", Some(&self.beta_ff)),
        ] {
            if let Some(Gain::Learned(g)) = gain {
                out.push((format!("gain.{name}"), mean(g)?));
            }
        }
        if let Some((a, b, g)) = &self.attn.shape {
            out.extend([
                ("shaped.alpha".into(), mean(a)?),
                ("shaped.beta".into(), mean(b)?),
                ("shaped.gamma".into(), mean(g)?),
            ]);
        }
        Ok(out)
    }
}

/// Their baseline head (no bias), their final RMSNorm, and a LayerNorm on the embeddings
/// when the blocks have no norms.
impl Recipe for SimplifiedConfig {
    fn block(&self, layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Block>> {
        Ok(Box::new(SimplifiedBlock::new(layer, self, spec, vb)?))
    }

    fn dense(&self, spec: DenseSpec, vb: VarBuilder) -> Result<Box<dyn Dense>> {
        Ok(Box::new(nn::linear(spec.in_dim, spec.out_dim, spec.std, false, vb)?))
    }

    fn embedding_norm(&self, spec: &ModelSpec, vb: VarBuilder) -> Result<Option<Box<dyn Norm>>> {
        match self.norm {
            BlockNorm::None => Ok(Some(Box::new(LayerNorm::new(spec.gpt.n_embd, true, vb)?))),
            BlockNorm::Rms => Ok(None),
        }
    }

    fn final_norm(&self, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Norm>> {
        Ok(Box::new(RmsNorm::new(spec.gpt.n_embd, 1e-5, vb)?))
    }
}

pub struct SimplifiedBlocks(Gpt);

impl Experiment for SimplifiedBlocks {
    type Config = SimplifiedConfig;
    const NAME: &'static str = "simplified_blocks";
    const SUMMARY: &'static str = "One block with gains: pre-LN, parallel, skipless and skipless-parallel with shaped attention (He & Hofmann 2024).";
    const DESCRIPTION: &'static str = "He & Hofmann, Simplifying Transformer Blocks (ICLR 2024). Sequential \
        h = βSA·Attn(N1(x)) + αSA·x, out = βFF·MLP(N2(h)) + αFF·h, or parallel out = βFF·MLP(u) + \
        βSA·Attn(u) + αFF·x with u = N1(x); RMSNorm, ReLU MLP, biases only on Q and K. The skipless \
        forms use shaped attention A = α·I + β·softmax(QKᵀ/√D) − γ·C with W_Q = 0 at start, identity \
        value and output projections (no matmul) except layer 0's W_V = W + I. norm=none keeps only a \
        LayerNorm on the embeddings and the final norm. Gains and α, β, γ are logged as metrics.";

    fn variants() -> Vec<Variant> {
        vec![
            Variant::new("pre-ln", "sequential, gains 1, standard attention").set("block", Form::PreLn),
            Variant::new("parallel", "parallel form, standard attention").set("block", Form::Parallel),
            Variant::new("skipless", "SAS: no attention skip, shaped attention").set("block", Form::Skipless),
            Variant::new("skipless-parallel", "SAS-P: parallel, no skip at all")
                .set("block", Form::SkiplessParallel),
        ]
    }

    fn build(spec: &ModelSpec, config: &SimplifiedConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Gpt::new(config, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0)
    }

    fn param_options(&self, name: &str) -> ParamOptions {
        let shaping_or_gain = name.contains(".gain_") || name.contains(".shaped_");
        ParamOptions { weight_decay: shaping_or_gain.then_some(false), ..ParamOptions::default() }
    }
}

export_plugin!(SimplifiedBlocks);

#[cfg(test)]
mod tests {
    use super::*;
    use lmhost_kit::testing;

    fn configs() -> Vec<String> {
        let forms = ["pre-ln", "parallel", "skipless", "skipless-parallel"];
        forms
            .iter()
            .flat_map(|f| ["rms", "none"].map(|n| format!(r#"{{"block": "{f}", "norm": "{n}"}}"#)))
            .collect()
    }

    #[test]
    fn every_form_trains_and_generates_the_same_with_a_cache() {
        for config in configs() {
            testing::every_parameter_gets_a_gradient::<SimplifiedBlocks>(&config);
            testing::training_lowers_the_loss::<SimplifiedBlocks>(&config);
            testing::cache_matches_recompute::<SimplifiedBlocks>(&config);
        }
    }

    #[test]
    fn every_shaped_attention_starts_as_exactly_the_identity() {
        let gpt = GptConfig { n_layer: 3, n_embd: 32, n_head: 4, ..GptConfig::default() };
        let spec = ModelSpec::new(gpt, 64, 16);
        let store = ParamStore::new(0);
        let u = Tensor::randn(0f32, 1.0, (2, 9, 32), &Device::Cpu).unwrap();
        for form in [Form::Skipless, Form::SkiplessParallel] {
            for layer in 0..3 {
                let vb = store.var_builder(DType::F32, &Device::Cpu).pp(format!("{form}.{layer}"));
                let attn = SimplifiedAttention::new(layer, form, &spec, Positions::Learned, vb).unwrap();
                let out = attn.forward(&u, None).unwrap();
                let diff = (out - &u).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert_eq!(
                    diff, 0.0,
                    "{form}: layer {layer}'s attention is not exactly the identity at init"
                );
            }
        }
    }

    #[test]
    fn skipless_parallel_drops_the_value_and_output_weights() {
        let count = |form: &str| {
            testing::trainer::<SimplifiedBlocks>(&format!(r#"{{"block": "{form}", "n_layer": 3}}"#), 0)
                .params
                .count()
        };
        let (l, c, h) = (3u64, 32u64, 4u64);
        // Per layer SAS-P loses W_V and W_O (2C²) and N2 (C), and gains α, β, γ (3H) and βSA, βFF;
        // layer 0 keeps W_V (C²).
        let expected = count("pre-ln") - l * (2 * c * c + c) + c * c + l * (3 * h + 2);
        assert_eq!(count("skipless-parallel"), expected);
        assert!(count("skipless-parallel") < count("pre-ln"));
    }

    #[test]
    fn gains_and_shaping_are_logged_and_never_decayed() {
        let t = testing::trainer::<SimplifiedBlocks>(r#"{"block": "skipless"}"#, 0);
        let names: Vec<String> = t.model.extra_metrics().unwrap().into_iter().map(|m| m.0).collect();
        for expected in ["h0.gain.beta_sa", "h0.gain.alpha_ff", "h1.gain.beta_ff", "h1.shaped.gamma"] {
            assert!(names.iter().any(|n| n == expected), "{expected} missing from {names:?}");
        }
        assert_eq!(t.model.param_options("transformer.h.0.gain_beta_ff").weight_decay, Some(false));
        assert_eq!(t.model.param_options("transformer.h.0.attn.shaped_alpha").weight_decay, Some(false));
        assert_eq!(t.model.param_options("transformer.h.0.attn.q.weight").weight_decay, None);
    }
}
