//! modded-nanogpt's speedrun tricks (Jordan et al. 2024, the NanoGPT speedrun), each a knob on
//! the kit's parts and each a variant, on either arch:
//!
//! - QK-norm: RMSNorm with a learned gain on q and k per head, before RoPE and the scores;
//! - ReLU²: the MLP's activation is `relu(x)²` (in the llama arch it replaces SwiGLU, at width
//!   4C: two matrices of 4C hold what SwiGLU's three of 8C/3 do);
//! - logit soft-cap: `logits = s · tanh(logits / s)`, s = 30 (Gemma 2; modded-nanogpt's first);
//! - zero-initialised output projections: the `c_proj` of attention and MLP start at 0, so every
//!   block starts as the identity.

use lmhost_kit::prelude::*;

knobs! {
    /// The tricks; all off is the baseline.
    pub struct SpeedrunConfig {
        /// RMSNorm on q and k per head.
        pub qk_norm: bool = false,
        /// relu(x)² as the MLP (4C wide).
        pub relu2: bool = false,
        /// s in s · tanh(logits / s); 0 leaves the logits alone.
        pub softcap: f64 = 0.0,
        /// Attention's and the MLP's c_proj start at zero.
        pub zero_init: bool = false,
    }
}

impl Recipe for SpeedrunConfig {
    fn dense(&self, spec: DenseSpec, vb: VarBuilder) -> Result<Box<dyn Dense>> {
        let zero = self.zero_init && vb.prefix().ends_with("c_proj");
        Ok(Box::new(nn::dense(DenseSpec { std: if zero { 0.0 } else { spec.std }, ..spec }, vb)?))
    }

    fn attention(&self, _layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Attention>> {
        if self.qk_norm {
            Ok(Box::new(QkNormAttention::new(self, spec, vb)?))
        } else {
            Ok(Box::new(CausalSelfAttention::new(self, spec, vb)?))
        }
    }

    fn mlp(&self, _layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn FeedForward>> {
        if !self.relu2 {
            return match spec.gpt.arch {
                Arch::Gpt2 => Ok(Box::new(Mlp::new(self, spec, vb)?)),
                Arch::Llama => Ok(Box::new(SwiGlu::new(self, spec, vb)?)),
            };
        }
        let width = if spec.gpt.mlp_width == 0 { 4 * spec.gpt.n_embd } else { spec.gpt.mlp_width };
        let spec = ModelSpec { gpt: GptConfig { mlp_width: width, ..spec.gpt.clone() }, ..spec.clone() };
        Ok(Box::new(Mlp::with_activation(self, &spec, Activation::ReluSquared, vb)?))
    }
}

pub struct Speedrun {
    gpt: Gpt,
    softcap: f64,
}

impl Speedrun {
    /// `s · tanh(z / s)`: logits bounded by ±s, unchanged near 0 (Gemma 2, section 2).
    fn cap(&self, logits: Tensor) -> Result<Tensor> {
        if self.softcap > 0.0 {
            (logits / self.softcap)?.tanh()? * self.softcap
        } else {
            Ok(logits)
        }
    }
}

impl Experiment for Speedrun {
    type Config = SpeedrunConfig;
    const NAME: &'static str = "speedrun";
    const SUMMARY: &'static str =
        "modded-nanogpt's tricks as knobs: QK-norm, ReLU², logit soft-cap 30, zero-initialised projections.";
    const DESCRIPTION: &'static str =
        "The NanoGPT speedrun's architecture tricks (Jordan et al. 2024, modded-nanogpt), each a knob \
        and a variant: qk_norm (RMSNorm on q and k per head, before RoPE), relu2 (relu(x)² MLP, 4C \
        wide, in place of GELU or SwiGLU), softcap (logits = s·tanh(logits/s), s = 30 as in Gemma 2) \
        and zero_init (attention's and the MLP's c_proj start at zero). Runs on arch=gpt2 and \
        arch=llama; pair it with optimizer=muon for the speedrun's optimiser.";

    fn variants() -> Vec<Variant> {
        vec![
            Variant::new("qk_norm", "RMSNorm on q and k per head").set("qk_norm", true),
            Variant::new("relu2", "relu(x)² MLP").set("relu2", true),
            Variant::new("softcap", "logits soft-capped at 30").set("softcap", 30.0),
            Variant::new("zero_init", "output projections start at zero").set("zero_init", true),
            Variant::new("all", "the four together")
                .set("qk_norm", true)
                .set("relu2", true)
                .set("softcap", 30.0)
                .set("zero_init", true),
        ]
    }

    fn build(spec: &ModelSpec, config: &SpeedrunConfig, vb: VarBuilder) -> Result<Self> {
        if config.softcap < 0.0 {
            lmhost_kit::candle::bail!("softcap={} must be positive, or 0 for none", config.softcap);
        }
        Ok(Self { gpt: Gpt::new(config, spec, vb)?, softcap: config.softcap })
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.gpt)
    }

    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        self.cap(self.gpt.forward(ids)?)
    }

    fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Option<Tensor>> {
        Ok(Some(self.cap(self.gpt.forward_cached(ids, cache)?)?))
    }
}

export_plugin!(Speedrun);

#[cfg(test)]
mod tests {
    use super::*;
    use lmhost_kit::testing;

    const VARIANTS: [&str; 5] = [
        r#"{"qk_norm": true}"#,
        r#"{"relu2": true}"#,
        r#"{"softcap": 30.0}"#,
        r#"{"zero_init": true}"#,
        r#"{"qk_norm": true, "relu2": true, "softcap": 30.0, "zero_init": true}"#,
    ];

    #[test]
    fn every_trick_trains_in_both_archs() {
        for config in VARIANTS {
            testing::every_parameter_gets_a_gradient::<Speedrun>(config);
            testing::training_lowers_the_loss::<Speedrun>(config);
        }
        testing::cache_matches_recompute::<Speedrun>(VARIANTS[4]);
    }

    #[test]
    fn each_trick_changes_what_it_says() {
        let ids: Vec<u32> = testing::batch(2, 0).into_iter().take(2 * testing::CONTEXT).collect();
        for arch in ["gpt2", "llama"] {
            let with = |extra: &str| format!(r#"{{"arch": "{arch}"{extra}}}"#);
            // Zero-initialised projections: every block starts as the identity, so the logits
            // are the head of the final norm of the embeddings, for every position alike.
            let t = testing::trainer::<Speedrun>(&with(r#", "zero_init": true"#), 1);
            let names: Vec<String> = t.params.params().into_iter().map(|p| p.name).collect();
            for p in t.params.params().iter().filter(|p| p.name.ends_with("c_proj.weight")) {
                let sum: f32 = p.var.as_tensor().abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
                assert_eq!(sum, 0.0, "{arch}: {} starts at zero", p.name);
            }
            assert!(names.iter().any(|n| n.ends_with("c_fc.weight")));
            // The soft-cap bounds the logits by s.
            let capped = testing::trainer::<Speedrun>(&with(r#", "softcap": 0.5"#), 1);
            let logits = capped.logits(&ids, 2, testing::CONTEXT).unwrap();
            assert!(logits.iter().all(|z| z.abs() < 0.5), "{arch}");
            assert!(logits.iter().any(|z| z.abs() > 0.01), "{arch}");
            // QK-norm adds a gain per head dimension to q and k; ReLU² drops SwiGLU's gate.
            let qk = testing::trainer::<Speedrun>(&with(r#", "qk_norm": true"#), 1);
            assert!(qk.params.params().iter().any(|p| p.name == "transformer.h.0.attn.q_norm.weight"));
            let relu2 = testing::trainer::<Speedrun>(&with(r#", "relu2": true"#), 1);
            let fc = relu2
                .params
                .params()
                .into_iter()
                .find(|p| p.name == "transformer.h.0.mlp.c_fc.weight")
                .unwrap();
            assert_eq!(fc.var.dims()[0], 4 * 32, "{arch}: 4C wide");
            assert!(!relu2.params.params().iter().any(|p| p.name.contains("c_gate")));
        }
    }
}
