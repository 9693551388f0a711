//! Unified weights (lmplay `uw1_*`, `uw2_0`): every dense layer's weight or bias is made from
//! extra training-time parameters, and folded back into a plain dense layer for the prod model.
//!
//! UW1 ("ULinear"), on every block linear and the head:
//! `W'[o,i] = (W[o,i]·(m[o]+mb) + a[o]+ab) · (im[i]+imb) + ia[i]+iab`,  `b' = b + bb`,
//! with `m, im` initialised to 1 and the rest to 0, so a UW1 model starts as the baseline.
//! `uw1_0` learns m, mb, bb; `uw1_1` adds im, imb; `uw1_2` adds a, ab, ia, iab.
//!
//! UW2, on every block linear: biases predicted by a net shared across layers,
//! `b = Wb · GELU(Ws · e + bs) + bb`, `Ws: C → C` and `bs` shared by all, `e ∈ R^C`, `Wb` and `bb`
//! per layer (one set per dense layer here). `Wb` and `bb` start at 0, so biases start at 0 as in
//! the baseline. The head keeps its own bias.
//!
//! Sacrificial: the prod model stores `W'`, `b'` (or the predicted `b`) under the baseline's
//! names. Reported for UW1: about −0.10 validation loss against the 6-layer baseline.

use lmhost_kit::prelude::*;

knob_enum! {
    /// Which reparameterisation.
    pub enum Mode {
        Uw1_0 = "uw1_0",
        Uw1_1 = "uw1_1",
        Uw1_2 = "uw1_2",
        Uw2_0 = "uw2_0",
    }
}

knobs! {
    /// The unified-weights variant.
    pub struct UwConfig {
        /// uw1_0 (row scales), uw1_1 (+ column scales), uw1_2 (+ offsets), or uw2_0 (predicted biases).
        pub uw_mode: Mode = Mode::Uw1_0,
    }
}

/// A learned vector, with a scalar added to all of it: `v + s`.
struct Shifted {
    vector: Tensor,
    scalar: Tensor,
}

impl Shifted {
    fn new(n: usize, start: f64, name: &str, vb: &VarBuilder) -> Result<Self> {
        Ok(Self {
            vector: vb.get_with_hints(n, name, Init::Const(start))?,
            scalar: vb.get_with_hints(1, &format!("{name}b"), Init::Const(0.0))?,
        })
    }

    fn value(&self) -> Result<Tensor> {
        self.vector.broadcast_add(&self.scalar)
    }
}

/// UW1's dense layer.
struct ULinear {
    weight: Tensor,
    bias: Tensor,
    /// Scalar added to the bias.
    bb: Tensor,
    /// m + mb, per output row.
    row_scale: Shifted,
    /// im + imb, per input column (uw1_1, uw1_2).
    column_scale: Option<Shifted>,
    /// a + ab per row, and ia + iab per column (uw1_2).
    offsets: Option<(Shifted, Shifted)>,
    name: String,
}

impl ULinear {
    /// W' and b'.
    fn effective(&self) -> Result<(Tensor, Tensor)> {
        let mut w = self.weight.broadcast_mul(&self.row_scale.value()?.unsqueeze(1)?)?; // (out, in)
        if let Some((a, _)) = &self.offsets {
            w = w.broadcast_add(&a.value()?.unsqueeze(1)?)?;
        }
        if let Some(im) = &self.column_scale {
            w = w.broadcast_mul(&im.value()?.unsqueeze(0)?)?;
        }
        if let Some((_, ia)) = &self.offsets {
            w = w.broadcast_add(&ia.value()?.unsqueeze(0)?)?;
        }
        Ok((w, self.bias.broadcast_add(&self.bb)?))
    }
}

impl Dense for ULinear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (weight, bias) = self.effective()?;
        Linear { weight, bias: Some(bias), name: self.name.clone() }.forward(x)
    }

    fn prod(&self) -> Result<Named> {
        let (w, b) = self.effective()?;
        Ok(nn::weight_and_bias(&self.name, &w, Some(&b)))
    }
}

/// UW2's net shared by every layer: `GELU(Ws · e + bs)`.
struct BiasNet {
    ws: Linear,
}

/// UW2's dense layer: a plain weight and a predicted bias.
struct PredictedBias {
    weight: Tensor,
    embedding: Tensor,
    wb: Linear,
    net: std::sync::Arc<BiasNet>,
    name: String,
}

impl PredictedBias {
    fn bias(&self) -> Result<Tensor> {
        let hidden = nn::gelu(&self.net.ws.forward(&self.embedding.unsqueeze(0)?)?)?; // (1, C)
        self.wb.forward(&hidden)?.squeeze(0) // (out,)
    }
}

impl Dense for PredictedBias {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Linear { weight: self.weight.clone(), bias: Some(self.bias()?), name: self.name.clone() }.forward(x)
    }

    fn prod(&self) -> Result<Named> {
        Ok(nn::weight_and_bias(&self.name, &self.weight, Some(&self.bias()?)))
    }
}

/// The dense layers this experiment replaces, and UW2's shared net.
struct UwParts {
    mode: Mode,
    net: Option<std::sync::Arc<BiasNet>>,
}

impl Recipe for UwParts {
    fn dense(&self, spec: DenseSpec, vb: VarBuilder) -> Result<Box<dyn Dense>> {
        let weight = vb.get_with_hints(
            (spec.out_dim, spec.in_dim),
            "weight",
            Init::Randn { mean: 0.0, stdev: spec.std },
        )?;
        let name = vb.prefix();
        match (&self.net, name == "lm_head") {
            (Some(net), false) => Ok(Box::new(PredictedBias {
                weight,
                embedding: vb.get_with_hints(
                    net.ws.weight.dim(1)?,
                    "bias_e",
                    Init::Randn { mean: 0.0, stdev: 1.0 },
                )?,
                wb: nn::linear(net.ws.weight.dim(0)?, spec.out_dim, 0.0, true, vb.pp("bias_w"))?,
                net: net.clone(),
                name,
            })),
            (Some(_), true) => Ok(Box::new(nn::linear(spec.in_dim, spec.out_dim, spec.std, spec.bias, vb)?)),
            (None, _) => {
                let column_scale = match self.mode {
                    Mode::Uw1_1 | Mode::Uw1_2 => Some(Shifted::new(spec.in_dim, 1.0, "im", &vb)?),
                    _ => None,
                };
                let offsets = match self.mode {
                    Mode::Uw1_2 => Some((
                        Shifted::new(spec.out_dim, 0.0, "a", &vb)?,
                        Shifted::new(spec.in_dim, 0.0, "ia", &vb)?,
                    )),
                    _ => None,
                };
                Ok(Box::new(ULinear {
                    bias: vb.get_with_hints(spec.out_dim, "bias", Init::Const(0.0))?,
                    bb: vb.get_with_hints(1, "bb", Init::Const(0.0))?,
                    row_scale: Shifted::new(spec.out_dim, 1.0, "m", &vb)?,
                    column_scale,
                    offsets,
                    weight,
                    name,
                }))
            }
        }
    }
}

pub struct UnifiedWeights(Gpt);

impl Experiment for UnifiedWeights {
    type Config = UwConfig;
    const NAME: &'static str = "unified_weights";
    const SUMMARY: &'static str =
        "Learned scales and offsets around every dense weight (UW1), or shared-net biases (UW2).";
    const DESCRIPTION: &'static str =
        "lmplay's unified weights. UW1: W'[o,i] = (W[o,i]·(m[o]+mb) + a[o]+ab) · \
        (im[i]+imb) + ia[i]+iab and b' = b + bb on every block linear and the head (uw1_0: m, mb, bb; \
        uw1_1: + im, imb; uw1_2: + a, ab, ia, iab). UW2: every block linear's bias is \
        Wb · GELU(Ws · e + bs) + bb with Ws, bs shared by all layers. Sacrificial: the prod model is \
        the plain baseline with the folded weights. lmplay reports about -0.10 validation loss for \
        UW1 against its 6-layer baseline.";
    const SACRIFICIAL: bool = true;

    fn variants() -> Vec<Variant> {
        vec![
            Variant::new("uw1_0", "row scales m + mb and a bias offset bb").set("uw_mode", Mode::Uw1_0),
            Variant::new("uw1_1", "and column scales im + imb").set("uw_mode", Mode::Uw1_1),
            Variant::new("uw1_2", "and row and column offsets a + ab, ia + iab").set("uw_mode", Mode::Uw1_2),
            Variant::new("uw2_0", "biases predicted by a net shared across layers")
                .set("uw_mode", Mode::Uw2_0),
        ]
    }

    fn build(spec: &ModelSpec, config: &UwConfig, vb: VarBuilder) -> Result<Self> {
        if !spec.biases() {
            // Every variant learns around a dense layer's bias (bb, or UW2's predicted one).
            lmhost_kit::candle::bail!(
                "unified_weights needs the dense layers' biases; arch=llama has none: use arch=gpt2"
            );
        }
        let c = spec.gpt.n_embd;
        // Ws ~ N(0, 1/√C) on e ~ N(0, 1): the shared net starts with unit-scale features.
        let net = match config.uw_mode {
            Mode::Uw2_0 => Some(std::sync::Arc::new(BiasNet {
                ws: nn::linear(c, c, 1.0 / (c as f64).sqrt(), true, vb.pp("uw2.ws"))?,
            })),
            _ => None,
        };
        Ok(Self(Gpt::new(&UwParts { mode: config.uw_mode, net }, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0)
    }
}

export_plugin!(UnifiedWeights);

#[cfg(test)]
mod tests {
    use super::*;
    use lmhost_kit::{testing, Baseline};

    // Unified weights live on biased dense layers: gpt2's architecture only.
    const VARIANTS: [&str; 4] = [
        r#"{"uw_mode": "uw1_0", "arch": "gpt2"}"#,
        r#"{"uw_mode": "uw1_1", "arch": "gpt2"}"#,
        r#"{"uw_mode": "uw1_2", "arch": "gpt2"}"#,
        r#"{"uw_mode": "uw2_0", "arch": "gpt2"}"#,
    ];

    #[test]
    fn llama_is_refused_with_the_reason() {
        let config = r#"{"arch": "llama"}"#;
        let spec = lmhost_kit::trainer::RunSpec::cpu(2, testing::VOCAB, testing::CONTEXT);
        let err = lmhost_kit::trainer::Trainer::<UnifiedWeights>::new(&spec, config).err().expect("refused");
        assert!(err.to_string().contains("arch=gpt2"), "{err}");
    }

    #[test]
    fn every_variant_trains_and_exports_to_the_baseline() {
        // A projection into the residual stream (`c_proj`) that adds the same number to every
        // output feature changes nothing any LayerNorm reads, so these get a gradient of 0 up
        // to rounding: the bias shift bb, and the offsets ab, ia and iab (each adds Σ over the
        // input to every output alike).
        // The same on the head, where the softmax cannot see a number added to every logit.
        let invisible = [
            "c_proj.bb",
            "c_proj.ab",
            "c_proj.ia",
            "c_proj.iab",
            "lm_head.bb",
            "lm_head.ab",
            "lm_head.ia",
            "lm_head.iab",
        ];
        for config in VARIANTS {
            testing::every_parameter_but_gets_a_gradient::<UnifiedWeights>(config, &invisible);
            testing::training_lowers_the_loss::<UnifiedWeights>(config);
            testing::prod_weights_reproduce_the_experiment::<UnifiedWeights>(config);
        }
        testing::cache_matches_recompute::<UnifiedWeights>(VARIANTS[2]);
    }

    #[test]
    fn every_variant_starts_as_the_baseline() {
        // m, im = 1 and every offset 0 (UW1), Wb = 0 and bb = 0 (UW2): the same function as the
        // baseline with the same seed, whose weights have the same names and values.
        let ids: Vec<u32> = testing::batch(2, 0).into_iter().take(2 * testing::CONTEXT).collect();
        let baseline = testing::trainer::<Baseline>("", 4).logits(&ids, 2, testing::CONTEXT).unwrap();
        for config in VARIANTS {
            let ours =
                testing::trainer::<UnifiedWeights>(config, 4).logits(&ids, 2, testing::CONTEXT).unwrap();
            let worst = ours.iter().zip(&baseline).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-6, "{config}: {worst}");
        }
    }

    #[test]
    fn uw1_2_folds_exactly_what_the_formula_says() {
        let t = testing::trainer::<UnifiedWeights>(VARIANTS[2], 5);
        let p = |n: &str| t.params.tensors().into_iter().find(|(k, _)| k == n).unwrap().1;
        // Move every extra parameter off its start so each term shows.
        let name = "transformer.h.0.mlp.c_fc";
        let store = &t.params;
        for param in store.params() {
            if let Some(suffix) = param.name.strip_prefix(&format!("{name}.")) {
                let v = match suffix {
                    "m" => 1.5,
                    "mb" => 0.25,
                    "a" => 0.1,
                    "ab" => -0.2,
                    "im" => 0.8,
                    "imb" => 0.05,
                    "ia" => 0.3,
                    "iab" => 0.01,
                    "bb" => 0.5,
                    _ => continue,
                };
                param.var.set(&param.var.ones_like().unwrap().affine(v, 0.0).unwrap()).unwrap();
            }
        }
        let prod = t.export_prod().unwrap();
        let folded = lmhost_kit::candle::safetensors::load_buffer(&prod, &Device::Cpu).unwrap();
        let w = p(&format!("{name}.weight")).to_vec2::<f32>().unwrap();
        let b = p(&format!("{name}.bias")).to_vec1::<f32>().unwrap();
        let w2 = folded[&format!("{name}.weight")].to_vec2::<f32>().unwrap();
        let b2 = folded[&format!("{name}.bias")].to_vec1::<f32>().unwrap();
        for (o, row) in w.iter().enumerate() {
            for (i, &x) in row.iter().enumerate() {
                let expect = (x * (1.5 + 0.25) + 0.1 - 0.2) * (0.8 + 0.05) + 0.3 + 0.01;
                assert!((w2[o][i] - expect).abs() < 1e-5, "W'[{o},{i}] = {} vs {expect}", w2[o][i]);
            }
            assert!((b2[o] - (b[o] + 0.5)).abs() < 1e-6);
        }
    }
}
