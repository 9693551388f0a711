//! μP (maximal-update parametrisation; Yang et al., Tensor Programs V) for the baseline GPT, next
//! to the standard parametrisation (SP), as mup-lr-warmup compares them on hlb-gpt.
//!
//! With width multiplier `m = n_embd / mup_base_width`, under μP:
//! - hidden (matrix-like) weights train at `lr / m` and start at `N(0, σ²/m)` (σ the baseline's,
//!   so the base width starts exactly as SP does);
//! - embeddings, norms, biases and the head keep the base learning rate;
//! - the readout computes `W (x / m)`, with `W` drawn `√m` times larger at init;
//! - attention scores use `1/D` instead of `1/√D`.
//!
//! Under SP the model is the baseline. Their finding: μP beats SP at every warmup length, and
//! warmup matters less under μP; count warmup in tokens with `warmup_unit=tokens`.
//! [`coordinate_check`] prints the activation scale of each layer across widths.

use lmhost_kit::prelude::*;

knob_enum! {
    /// How the model scales with width.
    pub enum Parametrisation {
        Mup = "mup",
        Sp = "sp",
    }
}

knobs! {
    /// μP or SP, and the width μP is anchored at.
    pub struct MupConfig {
        /// mup or sp (the baseline).
        pub parametrisation: Parametrisation = Parametrisation::Mup,
        /// The width at which μP and SP coincide; m = n_embd / mup_base_width.
        pub mup_base_width: usize = 64,
    }
}

impl MupConfig {
    fn multiplier(&self, spec: &ModelSpec) -> f64 {
        match self.parametrisation {
            Parametrisation::Mup => spec.gpt.n_embd as f64 / self.mup_base_width as f64,
            Parametrisation::Sp => 1.0,
        }
    }
}

/// The μP readout: `W (x / m)`.
struct Readout {
    linear: Linear,
    multiplier: f64,
}

impl Dense for Readout {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear.forward(&(x / self.multiplier)?)
    }
}

/// The hidden weights: every dense layer of the blocks (not the head), by name.
fn is_hidden_weight(name: &str) -> bool {
    name.starts_with("transformer.h.") && name.ends_with(".weight") && !name.contains(".ln_")
}

/// The baseline with μP's initialisation, readout and attention scale.
struct MupParts {
    config: MupConfig,
    multiplier: f64,
}

impl Recipe for MupParts {
    fn dense(&self, spec: DenseSpec, vb: VarBuilder) -> Result<Box<dyn Dense>> {
        let m = self.multiplier;
        if vb.prefix() == "lm_head" {
            let linear = nn::dense(DenseSpec { std: spec.std * m.sqrt(), ..spec }, vb)?;
            return Ok(Box::new(Readout { linear, multiplier: m }));
        }
        Ok(Box::new(nn::dense(DenseSpec { std: spec.std / m.sqrt(), ..spec }, vb)?))
    }

    fn attention(&self, _layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Attention>> {
        let mut attn = CausalSelfAttention::new(self, spec, vb)?;
        if self.config.parametrisation == Parametrisation::Mup {
            attn.scale = 1.0 / spec.head_size() as f64; // 1/D instead of 1/√D
        }
        Ok(Box::new(attn))
    }
}

pub struct Mup {
    gpt: Gpt,
    multiplier: f64,
}

impl Experiment for Mup {
    type Config = MupConfig;
    const NAME: &'static str = "mup";
    const SUMMARY: &'static str =
        "μP for the baseline (per-group learning rates, readout scaling, 1/D attention), next to SP.";
    const DESCRIPTION: &'static str = "Maximal-update parametrisation (Yang et al., Tensor Programs V) as \
        mup-lr-warmup applies it to hlb-gpt: with m = n_embd / mup_base_width, hidden weights train \
        at lr/m and start at N(0, σ²/m); embeddings, norms, biases and the head keep the base lr; \
        the readout computes W(x/m) with W √m larger at init; attention uses 1/D. variant=sp is the \
        baseline. Their finding: μP beats SP at every warmup length, and warmup matters less.";

    fn variants() -> Vec<Variant> {
        vec![
            Variant::new("mup", "maximal-update parametrisation")
                .set("parametrisation", Parametrisation::Mup),
            Variant::new("sp", "standard parametrisation (the baseline)")
                .set("parametrisation", Parametrisation::Sp),
        ]
    }

    fn build(spec: &ModelSpec, config: &MupConfig, vb: VarBuilder) -> Result<Self> {
        if config.mup_base_width == 0 {
            candle_core_error("mup_base_width must be positive")?;
        }
        let multiplier = config.multiplier(spec);
        Ok(Self { gpt: Gpt::new(&MupParts { config: config.clone(), multiplier }, spec, vb)?, multiplier })
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.gpt)
    }

    fn param_options(&self, name: &str) -> ParamOptions {
        let lr_scale = if is_hidden_weight(name) { 1.0 / self.multiplier } else { 1.0 };
        ParamOptions { lr_scale, ..ParamOptions::default() }
    }
}

fn candle_core_error(message: &str) -> Result<()> {
    Err(lmhost_kit::candle::Error::Msg(message.to_owned()))
}

export_plugin!(Mup);

/// The μP coordinate check: after a few AdamW steps at a fixed learning rate, the RMS of each
/// block's input and of the logits, for widths 64…512, under μP and SP. Flat rows mean the
/// updates keep the same size at every width (μP); rows that grow with width are SP's drift.
pub fn coordinate_check(steps: usize) -> Result<String> {
    use lmhost_kit::testing::{batch, CONTEXT};
    use lmhost_kit::trainer::{RunSpec, Trainer};
    let mut table = String::new();
    for p in ["mup", "sp"] {
        table.push_str(&format!(
            "{p}: RMS after {steps} steps (AdamW, lr 1e-2)\n{:>7} {:>9} {:>9} {:>9} {:>9}\n",
            "width", "block1_in", "block2_in", "block3_in", "logits"
        ));
        for width in [64, 128, 256, 512] {
            let config = format!(
                r#"{{"parametrisation": "{p}", "n_layer": 3, "n_embd": {width}, "n_head": {}, "weight_decay": 0, "grad_clip": 0}}"#,
                width / 32
            );
            let mut t = Trainer::<Mup>::new(&RunSpec::cpu(0, 64, CONTEXT), &config)
                .map_err(|e| lmhost_kit::candle::Error::Msg(e.to_string()))?;
            let ids = batch(4, 0);
            for _ in 0..steps {
                t.forward_backward(&ids, 4, CONTEXT + 1, 1.0 / (4 * CONTEXT) as f64)
                    .map_err(|e| lmhost_kit::candle::Error::Msg(e.to_string()))?;
                t.optimizer_step(1e-2).map_err(|e| lmhost_kit::candle::Error::Msg(e.to_string()))?;
            }
            let rms = |x: &Tensor| -> Result<f64> {
                Ok(f64::from(x.sqr()?.mean_all()?.sqrt()?.to_scalar::<f32>()?))
            };
            let inputs = Tensor::from_slice(&ids[..4 * CONTEXT], (4, CONTEXT), &Device::Cpu)?;
            t.model.gpt.probe_residuals();
            let logits = t.model.gpt.forward(&inputs)?;
            let states = t.model.gpt.take_residuals().unwrap_or_default();
            let mut row = format!("{width:>7}");
            for name in ["block1_in", "block2_in"] {
                let x = &states.iter().find(|s| s.0 == name).expect("probed").1;
                row.push_str(&format!(" {:>9.3}", rms(x)?));
            }
            // The last block's output is the final norm's input: recompute it from the stream.
            let last = &states.iter().find(|s| s.0 == "block2_in").expect("probed").1;
            let out = t.model.gpt.h[2].forward(last, None)?;
            row.push_str(&format!(" {:>9.3} {:>9.3}\n", rms(&out)?, rms(&logits)?));
            table.push_str(&row);
        }
    }
    Ok(table)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lmhost_kit::testing;

    #[test]
    fn both_parametrisations_train_and_generate_the_same_with_a_cache() {
        for config in [r#"{"parametrisation": "mup", "mup_base_width": 16}"#, r#"{"parametrisation": "sp"}"#]
        {
            testing::every_parameter_gets_a_gradient::<Mup>(config);
            testing::training_lowers_the_loss::<Mup>(config);
            testing::cache_matches_recompute::<Mup>(config);
        }
    }

    #[test]
    fn sp_is_the_baseline_and_mup_at_its_base_width_starts_as_sp() {
        let ids: Vec<u32> = testing::batch(2, 0).into_iter().take(2 * testing::CONTEXT).collect();
        let logits =
            |config: &str| testing::trainer::<Mup>(config, 3).logits(&ids, 2, testing::CONTEXT).unwrap();
        let baseline =
            testing::trainer::<lmhost_kit::Baseline>("", 3).logits(&ids, 2, testing::CONTEXT).unwrap();
        assert_eq!(logits(r#"{"parametrisation": "sp"}"#), baseline);
        // At the base width m = 1: the same weights; only the attention scale (1/D) differs.
        let mup = testing::trainer::<Mup>(r#"{"parametrisation": "mup", "mup_base_width": 32}"#, 3);
        assert_eq!(mup.model.multiplier, 1.0);
        assert_eq!(
            mup.params.tensors().len(),
            testing::trainer::<lmhost_kit::Baseline>("", 3).params.tensors().len()
        );
    }

    #[test]
    fn hidden_weights_train_at_lr_over_m() {
        let t = testing::trainer::<Mup>(r#"{"parametrisation": "mup", "mup_base_width": 8}"#, 0); // m = 32 / 8
        assert_eq!(t.model.param_options("transformer.h.0.mlp.c_fc.weight").lr_scale, 0.25);
        assert_eq!(t.model.param_options("transformer.h.0.mlp.c_fc.bias").lr_scale, 1.0);
        assert_eq!(t.model.param_options("transformer.h.0.ln_1.weight").lr_scale, 1.0);
        assert_eq!(t.model.param_options("transformer.wte.weight").lr_scale, 1.0);
        assert_eq!(t.model.param_options("lm_head.weight").lr_scale, 1.0);
    }

    /// `cargo test --release -p mup coordinate_check -- --nocapture` prints the table.
    #[test]
    fn coordinate_check_is_flat_under_mup_and_grows_under_sp() {
        let table = coordinate_check(3).unwrap();
        println!("{table}");
        let rows = |p: &str| -> Vec<Vec<f64>> {
            let section = table.split(&format!("{p}: ")).nth(1).unwrap();
            section
                .lines()
                .skip(2)
                .take(4)
                .map(|l| l.split_whitespace().skip(1).map(|v| v.parse().unwrap()).collect())
                .collect()
        };
        let growth = |rows: &[Vec<f64>], col: usize| rows[3][col] / rows[0][col]; // width 512 over 64
        let (mup, sp) = (rows("mup"), rows("sp"));
        for col in 0..4 {
            assert!(
                growth(&mup, col) < growth(&sp, col),
                "column {col}: μP grows {} vs SP {}",
                growth(&mup, col),
                growth(&sp, col)
            );
        }
        assert!(
            growth(&mup, 3) < 2.0 && growth(&sp, 3) > 2.0,
            "logits: μP {} SP {}",
            growth(&mup, 3),
            growth(&sp, 3)
        );
    }
}
