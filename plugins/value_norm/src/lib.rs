//! Value norm (lmplay `normv1_*`): the baseline GPT with one LayerNorm over the head size D,
//! shared by all heads, applied to the attention values before they are mixed:
//!
//! `v = LN_D(split_heads(W_v x))`, then `y = softmax(q kᵀ/√D + mask) v` as in the baseline.
//!
//! Variants choose the blocks that normalise: all of them (`normv1_0`), blocks ≥ 1
//! (`normv1_1`), or block 0 only (`normv1_2`). The norm stays in the prod model (not
//! sacrificial). Reported in lmplay: ≈ −0.07 validation loss against the 6-layer baseline.

use lmhost_kit::prelude::*;

knob_enum! {
    /// Which blocks normalise their values.
    pub enum Blocks {
        All = "all",
        From1 = "from1",
        First = "first",
    }
}

knobs! {
    /// Value-norm placement.
    pub struct ValueNormConfig {
        /// Blocks whose values are normalised: all, from1 (blocks ≥ 1) or first (block 0 only).
        pub value_norm_blocks: Blocks = Blocks::All,
    }
}

impl Blocks {
    fn includes(self, layer: usize) -> bool {
        match self {
            Blocks::All => true,
            Blocks::From1 => layer >= 1,
            Blocks::First => layer == 0,
        }
    }
}

/// The baseline's attention with `LN_D` on the values.
pub struct ValueNormAttention {
    attn: CausalSelfAttention,
    /// LayerNorm over D, shared by the heads; `None` in blocks that keep plain values.
    ln_v: Option<LayerNorm>,
}

impl Attention for ValueNormAttention {
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (q, k, v) = self.attn.qkv(x)?; // (B, H, T, D) each
        let v = match &self.ln_v {
            Some(ln) => ln.forward(&v)?, // normalises the last dimension, D
            None => v,
        };
        self.attn.attend(&q, &k, &v, cache)
    }
}

/// The one part value norm replaces: the attention.
impl Recipe for ValueNormConfig {
    fn attention(&self, layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Attention>> {
        let ln_v = if self.value_norm_blocks.includes(layer) {
            Some(LayerNorm::new(spec.head_size(), true, vb.pp("ln_v"))?)
        } else {
            None
        };
        Ok(Box::new(ValueNormAttention { attn: CausalSelfAttention::new(self, spec, vb)?, ln_v }))
    }
}

pub struct ValueNorm(Gpt);

impl Experiment for ValueNorm {
    type Config = ValueNormConfig;
    const NAME: &'static str = "value_norm";
    const SUMMARY: &'static str = "LayerNorm over the head size on the attention values (lmplay normv1).";
    const DESCRIPTION: &'static str = "lmplay's value norm: v = LN_D(split_heads(W_v x)), one \
        LayerNorm over the head size D shared by all heads, applied to the values before \
        attention. The rest is the baseline GPT. Kept in the prod model. lmplay reports about \
        -0.07 validation loss against its 6-layer baseline.";

    fn variants() -> Vec<Variant> {
        vec![
            Variant::new("normv1_0", "value norm in every block").set("value_norm_blocks", Blocks::All),
            Variant::new("normv1_1", "value norm in blocks 1 and up").set("value_norm_blocks", Blocks::From1),
            Variant::new("normv1_2", "value norm in block 0 only").set("value_norm_blocks", Blocks::First),
        ]
    }

    fn build(spec: &ModelSpec, config: &ValueNormConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Gpt::new(config, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0)
    }
}

export_plugin!(ValueNorm);

#[cfg(test)]
mod tests {
    use super::*;
    use lmhost_kit::testing;

    const VARIANTS: [&str; 3] = [
        r#"{"value_norm_blocks": "all"}"#,
        r#"{"value_norm_blocks": "from1"}"#,
        r#"{"value_norm_blocks": "first"}"#,
    ];

    #[test]
    fn every_variant_trains_and_generates_the_same_with_a_cache() {
        for config in VARIANTS {
            testing::every_parameter_gets_a_gradient::<ValueNorm>(config);
            testing::training_lowers_the_loss::<ValueNorm>(config);
            testing::cache_matches_recompute::<ValueNorm>(config);
        }
    }

    #[test]
    fn each_variant_puts_the_norm_in_its_blocks() {
        let norms = |config: &str| -> Vec<String> {
            let t = testing::trainer::<ValueNorm>(&format!(r#"{{"n_layer": 3, {}"#, &config[1..]), 0);
            t.params.params().into_iter().map(|p| p.name).filter(|n| n.contains("ln_v.weight")).collect()
        };
        assert_eq!(norms(VARIANTS[0]).len(), 3);
        assert_eq!(
            norms(VARIANTS[1]),
            ["transformer.h.1.attn.ln_v.weight", "transformer.h.2.attn.ln_v.weight"]
        );
        assert_eq!(norms(VARIANTS[2]), ["transformer.h.0.attn.ln_v.weight"]);
        // D = 32 / 4 = 8 weights and 8 biases per norm, on top of the baseline's parameters.
        let all = testing::trainer::<ValueNorm>(VARIANTS[0], 0).params.count();
        assert_eq!(all, testing::trainer::<lmhost_kit::Baseline>("", 0).params.count() + 2 * 16);
    }
}
