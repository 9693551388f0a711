use lmhost_kit::prelude::*;

knobs! {
    /// The idea's knobs: type, default and help, declared once.
    pub struct SharpConfig {
        /// Multiplies the attention logits (1 = the baseline).
        pub sharpness: f64 = 1.0,
    }
}

/// The baseline's attention with sharper (or softer) scores: softmax(s · q kᵀ / √D) v.
pub struct SharpAttention {
    attn: CausalSelfAttention,
    sharpness: f64,
}

impl Attention for SharpAttention {
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (q, k, v) = self.attn.qkv(x)?; // (B, H, T, D) each
        let q = (q * self.sharpness)?; // the idea
        self.attn.attend(&q, &k, &v, cache)
    }
}

/// The parts the idea replaces: the attention of every block; the rest stays the baseline's.
impl Recipe for SharpConfig {
    fn attention(&self, _layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Attention>> {
        let attn = CausalSelfAttention::new(self, spec, vb)?;
        Ok(Box::new(SharpAttention { attn, sharpness: self.sharpness }))
    }
}

pub struct Sharp(Gpt);

impl Experiment for Sharp {
    type Config = SharpConfig;
    const NAME: &'static str = "sharp";
    const SUMMARY: &'static str = "Attention logits multiplied by a constant.";
    const DESCRIPTION: &'static str = "softmax(s · q kᵀ / √D): s > 1 sharpens every attention head.";

    fn variants() -> Vec<Variant> {
        vec![Variant::new("x2", "twice as sharp").set("sharpness", 2.0)]
    }

    fn build(spec: &ModelSpec, config: &SharpConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Gpt::new(config, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0) // forward, cached generation and export come from the kit
    }
}

export_plugin!(Sharp);
