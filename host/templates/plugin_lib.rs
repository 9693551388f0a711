//! {{name}}: the baseline GPT with one idea changed. Say here what it is, in a sentence, with
//! its source (paper, section), and write the change as an equation.
//!
//! Made by `lmhost new {{name}}`: it starts as the baseline's attention with a knob, a variant and
//! tests; change the marked place. Other parts a `Recipe` can replace: `dense` (every dense layer,
//! see plugins/unified_weights) and `token_embedding` (see plugins/unified_embeddings).
//!
//! candle and candle-nn come with the kit: after the prelude, write `candle_nn::ops::…` or
//! `candle::…` (never `cargo add` them here: the plugin must use the host's version).

use lmhost_kit::prelude::*;

knobs! {
    /// {{name}}'s knobs: type, default and help, each declared once.
    pub struct {{Name}}Config {
        /// How strongly to apply the idea (1 = the baseline).
        pub strength: f64 = 1.0,
    }
}

/// The baseline's attention, with the place to change it marked.
pub struct {{Name}}Attention {
    attn: CausalSelfAttention,
    strength: f64,
}

impl Attention for {{Name}}Attention {
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (q, k, v) = self.attn.qkv(x)?; // (B, H, T, D) each
        // ---- your idea here: change q, k or v, or how they meet. For a start, `strength`
        // scales the attention logits: softmax(strength · q kᵀ / √D).
        let q = (q * self.strength)?;
        // ----
        self.attn.attend(&q, &k, &v, cache)
    }
}

/// The parts the idea replaces: the attention of every block; the rest stays the baseline's.
impl Recipe for {{Name}}Config {
    fn attention(&self, _layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Attention>> {
        let attn = CausalSelfAttention::new(self, spec, vb)?;
        Ok(Box::new({{Name}}Attention { attn, strength: self.strength }))
    }
}

pub struct {{Name}}(Gpt);

impl Experiment for {{Name}} {
    type Config = {{Name}}Config;
    const NAME: &'static str = "{{name}}";
    const SUMMARY: &'static str = "One line: what the idea changes.";
    const DESCRIPTION: &'static str = "The method, its source, and what to expect.";

    fn variants() -> Vec<Variant> {
        vec![
            Variant::new("default", "strength 1: the baseline's attention").set("strength", 1.0),
            Variant::new("strong", "strength 2").set("strength", 2.0),
        ]
    }

    fn build(spec: &ModelSpec, config: &{{Name}}Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Gpt::new(config, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0) // forward, cached generation and export come from the kit
    }
}

export_plugin!({{Name}});

#[cfg(test)]
mod tests {
    use super::*;
    use lmhost_kit::testing;

    #[test]
    fn it_trains_and_generates_the_same_with_a_cache() {
        for config in [r#"{"strength": 1.0}"#, r#"{"strength": 2.0}"#] {
            testing::every_parameter_gets_a_gradient::<{{Name}}>(config);
            testing::training_lowers_the_loss::<{{Name}}>(config);
            testing::cache_matches_recompute::<{{Name}}>(config);
        }
    }
}
