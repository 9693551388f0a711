//! Unified embeddings (lmplay `ue1_0`): every token's embedding is made by a small network
//! from a row of a table m times wider than the model,
//!
//! `e(t) = W2 · act(W1 · T[t] + b1) + b2`,  `T: (V, m·C)`, `W1: m·C → M`, `W2: M → C`,
//!
//! with M = C by default (lmplay's "mid" variants use 32 or 64) and no activation by default, as
//! lmplay's registered version ran (a flag bug). `e` is computed once per distinct id of a batch.
//! Sacrificial: the prod model stores `e(t)` for every t as the baseline's plain `V × C` table.
//! Reported: a 6-layer UE-8x model about 0.5 nats below the 6-layer baseline (≈ 5.5M samples of
//! Wikipedia).

use lmhost_kit::prelude::*;

knob_enum! {
    /// Between the two linears.
    pub enum Activation {
        None = "none",
        Gelu = "gelu",
    }
}

knobs! {
    /// The unified embedding's shape.
    pub struct UeConfig {
        /// Width of the table as a multiple of C (m; lmplay used 1, 8 and 16).
        pub ue_multiplier: usize = 8,
        /// Width between the two linears (M); 0 means C.
        pub ue_middle: usize = 0,
        /// none (lmplay as run) or gelu.
        pub ue_activation: Activation = Activation::None,
    }
}

pub struct UnifiedEmbedding {
    /// T: (V, m·C).
    table: Tensor,
    w1: Linear,
    w2: Linear,
    activation: Activation,
    /// The baseline's name for the token embedding.
    name: String,
}

impl UnifiedEmbedding {
    /// Distinct ids (N,) → embeddings (N, C).
    fn embed(&self, ids: &Tensor) -> Result<Tensor> {
        let rows = self.table.index_select(ids, 0)?; // (N, m·C)
        let hidden = self.w1.forward(&rows)?; // (N, M)
        let hidden = match self.activation {
            Activation::None => hidden,
            Activation::Gelu => nn::gelu(&hidden)?,
        };
        self.w2.forward(&hidden) // (N, C)
    }
}

impl TokenEmbedding for UnifiedEmbedding {
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        // Embed each distinct id once, then place the rows: ids (B, T) → (B, T, C).
        let flat = ids.flatten_all()?.to_vec1::<u32>()?;
        let mut distinct = flat.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let slot: Vec<u32> = flat.iter().map(|id| distinct.binary_search(id).unwrap_or(0) as u32).collect();
        let device = ids.device();
        let embedded = self.embed(&Tensor::from_vec(distinct.clone(), distinct.len(), device)?)?; // (U, C)
        let mut dims = ids.dims().to_vec();
        dims.push(embedded.dim(1)?);
        embedded.index_select(&Tensor::from_vec(slot, flat.len(), device)?, 0)?.reshape(dims)
    }

    fn prod(&self) -> Result<Named> {
        let vocab = self.table.dim(0)?;
        let all = Tensor::arange(0u32, vocab as u32, self.table.device())?;
        Ok(vec![(format!("{}.weight", self.name), self.embed(&all)?)])
    }
}

impl Recipe for UeConfig {
    fn token_embedding(&self, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn TokenEmbedding>> {
        let c = spec.gpt.n_embd;
        let wide = self.ue_multiplier * c;
        let middle = if self.ue_middle == 0 { c } else { self.ue_middle };
        // Our initialisation (lmplay's is not specified to us): T ~ N(0, 1), W1 keeps unit scale,
        // W2 brings e(t) to the baseline table's N(0, init_std).
        Ok(Box::new(UnifiedEmbedding {
            table: vb.get_with_hints(
                (spec.vocab_size, wide),
                "table",
                Init::Randn { mean: 0.0, stdev: 1.0 },
            )?,
            w1: nn::linear(wide, middle, 1.0 / (wide as f64).sqrt(), true, vb.pp("w1"))?,
            w2: nn::linear(middle, c, spec.gpt.init_std / (middle as f64).sqrt(), true, vb.pp("w2"))?,
            activation: self.ue_activation,
            name: vb.prefix(),
        }))
    }
}

pub struct UnifiedEmbeddings(Gpt);

impl Experiment for UnifiedEmbeddings {
    type Config = UeConfig;
    const NAME: &'static str = "unified_embeddings";
    const SUMMARY: &'static str =
        "Token embeddings made by two linears from a table m times wider (lmplay ue1).";
    const DESCRIPTION: &'static str =
        "lmplay's unified embeddings: e(t) = W2 · act(W1 · T[t] + b1) + b2 with \
        T: V × m·C (m = 8 by default), W1: m·C → M, W2: M → C (M = C by default). Computed once per \
        distinct id of a batch. Sacrificial: the prod model is the baseline with e(t) stored as its \
        plain embedding table. lmplay reports a 6-layer UE-8x model about 0.5 nats below the \
        6-layer baseline.";
    const SACRIFICIAL: bool = true;

    fn variants() -> Vec<Variant> {
        vec![
            Variant::new("ue8x", "table 8 × C wide (lmplay's ue1_0)").set("ue_multiplier", 8usize),
            Variant::new("ue1x", "table C wide").set("ue_multiplier", 1usize),
            Variant::new("ue16x", "table 16 × C wide").set("ue_multiplier", 16usize),
            Variant::new("ue8x_mid32", "8 × C table, 32 wide between the linears")
                .set("ue_multiplier", 8usize)
                .set("ue_middle", 32usize),
            Variant::new("ue8x_mid64", "8 × C table, 64 wide between the linears")
                .set("ue_multiplier", 8usize)
                .set("ue_middle", 64usize),
            Variant::new("ue8x_gelu", "8 × C table with GELU between the linears")
                .set("ue_multiplier", 8usize)
                .set("ue_activation", Activation::Gelu),
        ]
    }

    fn build(spec: &ModelSpec, config: &UeConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Gpt::new(config, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0)
    }
}

export_plugin!(UnifiedEmbeddings);

#[cfg(test)]
mod tests {
    use super::*;
    use lmhost_kit::testing;

    const VARIANTS: [&str; 4] = [
        r#"{"ue_multiplier": 8}"#,
        r#"{"ue_multiplier": 1}"#,
        r#"{"ue_multiplier": 2, "ue_middle": 8}"#,
        r#"{"ue_multiplier": 2, "ue_activation": "gelu"}"#,
    ];

    #[test]
    fn its_flops_are_the_baselines_and_the_two_linears_per_token() {
        // Counted by hand: each of the context's distinct tokens goes through W1 (m·C → M) and
        // W2 (M → C), forward and backward: 3 · 2 · (m·C·M + M·C) per token more than the
        // baseline, whose table is looked up for free.
        let baseline =
            testing::trainer::<lmhost_kit::Baseline>(r#"{"arch": "gpt2"}"#, 0).flops_per_token().unwrap();
        let c = 32.0;
        for (config, m, middle) in [
            (r#"{"ue_multiplier": 8, "arch": "gpt2"}"#, 8.0, c),
            (r#"{"ue_multiplier": 2, "ue_middle": 8, "arch": "gpt2"}"#, 2.0, 8.0),
        ] {
            let ue = testing::trainer::<UnifiedEmbeddings>(config, 0).flops_per_token().unwrap();
            assert_eq!(ue - baseline, 6.0 * (m * c * middle + middle * c), "{config}");
        }
    }

    #[test]
    fn every_variant_trains_and_exports_to_the_baseline() {
        for config in VARIANTS {
            testing::every_parameter_gets_a_gradient::<UnifiedEmbeddings>(config);
            testing::training_lowers_the_loss::<UnifiedEmbeddings>(config);
            testing::prod_weights_reproduce_the_experiment::<UnifiedEmbeddings>(config);
        }
        testing::cache_matches_recompute::<UnifiedEmbeddings>(VARIANTS[0]);
    }

    #[test]
    fn distinct_ids_give_what_embedding_every_position_gives() {
        let t = testing::trainer::<UnifiedEmbeddings>(VARIANTS[3], 0);
        let ids = Tensor::new(&[[3u32, 7, 3, 3], [7, 1, 1, 9]], &Device::Cpu).unwrap();
        let ue = &t.model.0.wte;
        let once = ue.forward(&ids).unwrap();
        let table = &ue.prod().unwrap()[0].1; // e(t) for every t
        let every = table.index_select(&ids.flatten_all().unwrap(), 0).unwrap().reshape((2, 4, 32)).unwrap();
        let diff = (once - every).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-6, "{diff}");
    }
}
