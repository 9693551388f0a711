//! Checks every plugin should pass, written once: call them from a plugin's `#[cfg(test)]`
//! module with the plugin's config (a JSON object; the model is made small here).
//!
//! ```ignore
//! #[test]
//! fn every_parameter_learns() {
//!     lmhost_kit::testing::every_parameter_gets_a_gradient::<MyIdea>(r#"{"strength": 2.0}"#);
//! }
//! ```

use std::collections::HashMap;

use candle_core::{Device, Tensor};
use serde_json::{Map, Value};

use crate::experiment::{Baseline, Experiment};
use crate::generate::{generate, Sampling};
use crate::precision::Precision;
use crate::trainer::{RunSpec, Trainer};

/// Vocabulary and context of the test models.
pub const VOCAB: usize = 64;
pub const CONTEXT: usize = 16;

/// The model size the checks use, merged under the plugin's own keys.
fn small(config: &str) -> String {
    let mut map: Map<String, Value> =
        serde_json::from_str(r#"{"n_layer": 2, "n_embd": 32, "n_head": 4}"#).unwrap();
    let own: Map<String, Value> = serde_json::from_str(if config.trim().is_empty() { "{}" } else { config })
        .expect("config is a JSON object");
    map.extend(own);
    Value::Object(map).to_string()
}

/// A small trainer of the experiment on the CPU.
pub fn trainer<E: Experiment>(config: &str, seed: u64) -> Trainer<E> {
    trainer_in::<E>(config, seed, Precision::F32)
}

/// The same in another precision.
pub fn trainer_in<E: Experiment>(config: &str, seed: u64, precision: Precision) -> Trainer<E> {
    let spec = RunSpec { precision, ..RunSpec::cpu(seed, VOCAB, CONTEXT) };
    Trainer::<E>::new(&spec, &small(config)).unwrap_or_else(|e| panic!("{}: {e}", E::NAME))
}

/// A batch of `rows` windows of CONTEXT + 1 ids with some structure to learn.
pub fn batch(rows: usize, salt: u32) -> Vec<u32> {
    (0..(rows * (CONTEXT + 1)) as u32).map(|i| (i * 7 + salt + (i / 5) * 3) % VOCAB as u32).collect()
}

fn step<E: Experiment>(t: &mut Trainer<E>, ids: &[u32], lr: f64) {
    let rows = ids.len() / (CONTEXT + 1);
    t.forward_backward(ids, rows, CONTEXT + 1, 1.0 / (rows * CONTEXT) as f64)
        .unwrap_or_else(|e| panic!("{}: {e}", E::NAME));
    t.optimizer_step(lr).unwrap_or_else(|e| panic!("{}: {e}", E::NAME));
}

/// After one update (so zero-initialised parameters have moved), every parameter receives a
/// non-zero gradient.
pub fn every_parameter_gets_a_gradient<E: Experiment>(config: &str) {
    every_parameter_but_gets_a_gradient::<E>(config, &[])
}

/// The same, except for parameters whose names end with one of `invariant`: parameters the loss
/// cannot see, whose gradient is 0 up to rounding (a constant added to every feature of the
/// residual stream, which only LayerNorms read). They must still get a gradient tensor.
pub fn every_parameter_but_gets_a_gradient<E: Experiment>(config: &str, invariant: &[&str]) {
    let mut t = trainer::<E>(config, 0);
    step(&mut t, &batch(2, 0), 1e-2);
    let ids = batch(2, 3);
    t.forward_backward(&ids, 2, CONTEXT + 1, 1.0 / (2 * CONTEXT) as f64).unwrap();
    for (name, g) in t.gradients() {
        let g = g.unwrap_or_else(|| panic!("{}: `{name}` gets no gradient", E::NAME));
        let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        if !invariant.iter().any(|s| name.ends_with(s)) {
            assert!(norm > 0.0, "{}: `{name}` gets a zero gradient", E::NAME);
        }
    }
}

/// Thirty steps on one batch lower its loss by a quarter or more, and every loss is finite, in
/// f32 and in bf16-mixed precision (the model's own tensors meet bf16 activations there: a part
/// that mixes dtypes fails here, not on a user's GPU).
pub fn training_lowers_the_loss<E: Experiment>(config: &str) {
    for precision in [Precision::F32, Precision::Bf16Mixed] {
        let mut t = trainer_in::<E>(config, 1, precision);
        let ids = batch(4, 1);
        let first =
            t.evaluate(&ids, 4, CONTEXT + 1).unwrap_or_else(|e| panic!("{} in {precision}: {e}", E::NAME));
        for _ in 0..30 {
            step(&mut t, &ids, 3e-3);
        }
        let last = t.evaluate(&ids, 4, CONTEXT + 1).unwrap();
        let what = format!("{} in {precision}: {first:?} → {last:?}", E::NAME);
        assert!(first.loss_sum.is_finite() && last.loss_sum.is_finite(), "{what}");
        assert!(last.loss_sum < 0.75 * first.loss_sum, "{what}");
    }
}

/// The prod weights, loaded into the plain baseline, give the trained experiment's logits, and
/// the prod model has exactly the baseline's parameters.
pub fn prod_weights_reproduce_the_experiment<E: Experiment>(config: &str) {
    let mut t = trainer::<E>(config, 2);
    for salt in 0..3 {
        step(&mut t, &batch(2, salt), 1e-2);
    }
    let mut baseline = trainer::<Baseline>(&model_keys_only(config), 9);
    baseline.load_weights(&t.export_prod().unwrap()).unwrap_or_else(|e| panic!("{}: {e}", E::NAME));
    let ids: Vec<u32> = batch(3, 5).into_iter().take(3 * CONTEXT).collect();
    let ours = t.logits(&ids, 3, CONTEXT).unwrap();
    let theirs = baseline.logits(&ids, 3, CONTEXT).unwrap();
    let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst < 1e-4, "{}: prod logits differ by {worst}", E::NAME);
    assert_eq!(t.param_counts().unwrap().prod, baseline.params.count(), "{}: prod parameter count", E::NAME);
}

/// Generation through the KV cache gives the same tokens as recomputing the window each time,
/// greedy and sampled, past the context length.
pub fn cache_matches_recompute<E: Experiment>(config: &str) {
    let mut t = trainer::<E>(config, 3);
    step(&mut t, &batch(2, 0), 1e-2);
    for temperature in [0.0, 0.8] {
        let s = Sampling { max_tokens: 2 * CONTEXT, temperature, top_k: 0, top_p: 1.0, seed: 5, stop: None };
        let cached = generate(&t.model, &[1, 2, 3], &s, CONTEXT, &Device::Cpu, true).unwrap();
        let recomputed = generate(&t.model, &[1, 2, 3], &s, CONTEXT, &Device::Cpu, false).unwrap();
        assert_eq!(cached, recomputed, "{} at temperature {temperature}", E::NAME);
    }
    let ids = Tensor::from_slice(&[1u32, 2, 3], (1, 3), &Device::Cpu).unwrap();
    assert!(
        t.model.forward_cached(&ids, &mut Default::default()).unwrap().is_some(),
        "{} has a KV cache",
        E::NAME
    );
}

/// The model-size keys of a plugin config, for the baseline that receives its prod weights.
fn model_keys_only(config: &str) -> String {
    let map: Map<String, Value> = serde_json::from_str(&small(config)).unwrap();
    let keep: HashMap<&str, ()> =
        ["n_layer", "n_embd", "n_head", "init_std"].map(|k| (k, ())).into_iter().collect();
    Value::Object(map.into_iter().filter(|(k, _)| keep.contains_key(k.as_str())).collect()).to_string()
}
