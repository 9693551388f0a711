use lmhost_kit::prelude::*;

knobs! {
    /// The idea's knobs: type, default and help, declared once.
    pub struct SharpConfig {
        /// Multiplies the attention logits (1 = the baseline).
        pub sharpness: f64 = 1.0,
    }
}

/// The baseline's attention with sharper (or softer) scores.
pub struct SharpAttention {
    attn: CausalSelfAttention,
    sharpness: f64,
}

impl Module for SharpAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (q, k, v) = self.attn.qkv(x)?; // (B, H, T, D) each
        let y = nn::causal_attention(&q, &k, &v, self.attn.scale * self.sharpness)?;
        self.attn.project(&y)
    }
}

/// The kit's baseline GPT with that attention in every block.
pub struct Sharp(Gpt<SharpAttention>);

impl Experiment for Sharp {
    type Config = SharpConfig;
    const NAME: &'static str = "sharp";
    const SUMMARY: &'static str = "Attention logits multiplied by a constant.";
    const DESCRIPTION: &'static str = "softmax(s · q kᵀ / √D): s > 1 sharpens every attention head.";

    fn variants() -> Vec<Variant> {
        vec![Variant::new("x2", "twice as sharp").set("sharpness", 2.0)]
    }

    fn build(spec: &ModelSpec, config: &SharpConfig, vb: VarBuilder) -> Result<Self> {
        let gpt = Gpt::with_attention(spec, vb, |_layer, vb| {
            Ok(SharpAttention { attn: CausalSelfAttention::new(spec, vb)?, sharpness: config.sharpness })
        })?;
        Ok(Self(gpt))
    }

    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.0.forward(ids) // ids (B, T) → logits (B, T, V)
    }
}

export_plugin!(Sharp);
