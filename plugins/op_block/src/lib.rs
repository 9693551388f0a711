//! The outlier-protected (OP) block (He et al., "Understanding and Minimising Outlier Features in
//! Transformer Training", NeurIPS 2024): no pre-norms (only a LayerNorm on the embeddings and the
//! final norm), RMSNorm on the queries and keys of every head, and both residual branches scaled by
//! a fixed 0.2:
//!
//! `h = x + 0.2·Attn(x);  out = h + 0.2·MLP(h)`.
//!
//! The kit logs the outlier kurtosis of every residual-stream state (`metrics_every`), the number
//! this block is meant to keep low.

use lmhost_kit::prelude::*;

knobs! {
    /// The OP block.
    pub struct OpConfig {
        /// The fixed scale of both residual branches.
        pub branch_scale: f64 = 0.2,
    }
}

/// `h = x + s·Attn(x); out = h + s·MLP(h)`, no norms.
pub struct OpBlock {
    attn: QkNormAttention,
    mlp: Box<dyn FeedForward>,
    scale: f64,
}

impl Block for OpBlock {
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let h = nn::residual(x, &(self.attn.forward(x, cache)? * self.scale)?)?;
        nn::residual(&h, &(self.mlp.forward(&h)? * self.scale)?)
    }
}

impl Recipe for OpConfig {
    fn block(&self, layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Block>> {
        Ok(Box::new(OpBlock {
            attn: QkNormAttention::new(self, spec, vb.pp("attn"))?,
            mlp: self.mlp(layer, spec, vb.pp("mlp"))?,
            scale: self.branch_scale,
        }))
    }

    fn embedding_norm(&self, spec: &ModelSpec, vb: VarBuilder) -> Result<Option<Box<dyn Norm>>> {
        Ok(Some(self.norm(spec, vb)?)) // the arch's: LayerNorm (gpt2), RMSNorm (llama)
    }
}

pub struct OpBlockModel(Gpt);

impl Experiment for OpBlockModel {
    type Config = OpConfig;
    const NAME: &'static str = "op_block";
    const SUMMARY: &'static str =
        "The outlier-protected block: no pre-norms, QK RMSNorm, branches scaled by 0.2 (He et al. 2024).";
    const DESCRIPTION: &'static str =
        "He et al., Understanding and Minimising Outlier Features in Transformer \
        Training (NeurIPS 2024). h = x + 0.2·Attn(x), out = h + 0.2·MLP(h), with no pre-norms (a \
        LayerNorm on the embeddings and the final norm remain) and RMSNorm on the queries and keys \
        of every head. Watch the kurtosis.* metrics: outlier features are what it removes.";

    fn build(spec: &ModelSpec, config: &OpConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Gpt::new(config, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0)
    }
}

export_plugin!(OpBlockModel);

#[cfg(test)]
mod tests {
    use super::*;
    use lmhost_kit::testing;

    #[test]
    fn it_trains_and_generates_the_same_with_a_cache() {
        testing::every_parameter_gets_a_gradient::<OpBlockModel>("");
        testing::training_lowers_the_loss::<OpBlockModel>("");
        testing::cache_matches_recompute::<OpBlockModel>("");
    }

    #[test]
    fn it_has_no_pre_norms_and_logs_the_outlier_metric() {
        let t = testing::trainer::<OpBlockModel>(r#"{"metrics_every": 1}"#, 0);
        let names: Vec<String> = t.params.params().into_iter().map(|p| p.name).collect();
        assert!(names.iter().any(|n| n == "transformer.ln_emb.weight"));
        assert!(names.iter().any(|n| n == "transformer.h.0.attn.q_norm.weight"));
        assert!(!names.iter().any(|n| n.contains("ln_1") || n.contains("ln_2")));
        let mut t = t;
        t.forward_backward(&testing::batch(2, 0), 2, testing::CONTEXT + 1, 0.01).unwrap();
        let metrics = t.extra_metrics().unwrap();
        let names: Vec<&str> = metrics.iter().map(|m| m.0.as_str()).collect();
        assert_eq!(names, ["kurtosis.block0_in", "kurtosis.block1_in", "kurtosis.final"]);
        assert!(metrics.iter().all(|m| m.1.is_finite() && m.1 >= 0.0));
    }
}
