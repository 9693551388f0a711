//! Checks every plugin should pass, written once: call them from a plugin's `#[cfg(test)]`
//! module with the plugin's config (a JSON object; the model is made small here). A config that
//! does not set `arch` is checked in both archs, gpt2 and llama: an idea built on the kit's parts
//! must work inside either baseline.
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

use crate::config::Knobs;
use crate::experiment::{Baseline, Experiment};
use crate::generate::{generate, Sampling};
use crate::gpt::GptConfig;
use crate::init::SplitMix;
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

/// The config in each arch it is checked in: as given when it sets `arch`, else once per arch.
pub fn in_each_arch(config: &str) -> Vec<String> {
    let map: Map<String, Value> = serde_json::from_str(&small(config)).unwrap();
    if map.contains_key("arch") {
        return vec![Value::Object(map).to_string()];
    }
    ["gpt2", "llama"]
        .iter()
        .map(|arch| {
            let mut m = map.clone();
            m.insert("arch".into(), Value::from(*arch));
            Value::Object(m).to_string()
        })
        .collect()
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
/// non-zero gradient in each of its row slices ([`SLICES`]: q, k and v of a fused `c_attn` each
/// get their own), and the gradient is the loss's derivative
/// ([`gradients_match_finite_differences`]).
pub fn every_parameter_gets_a_gradient<E: Experiment>(config: &str) {
    every_parameter_but_gets_a_gradient::<E>(config, &[])
}

/// The same, except for parameters whose names end with one of `invariant`: parameters the loss
/// cannot see, whose gradient is 0 up to rounding (a constant added to every feature of the
/// residual stream, which only LayerNorms read). They must still get a gradient tensor.
///
/// A slice of a parameter without a gradient is what an op without a backward leaves when the
/// same weight also reaches the loss another way: candle-nn's `rotary_emb::rope` on q and k cuts
/// two thirds of `c_attn` out of training while its v third still gets a gradient.
pub fn every_parameter_but_gets_a_gradient<E: Experiment>(config: &str, invariant: &[&str]) {
    for config in in_each_arch(config) {
        let mut t = trainer::<E>(&config, 0);
        step(&mut t, &batch(2, 0), 1e-2);
        // Enough rows that every token id is an input, so every row of the embedding sees one.
        let ids = batch(8, 3);
        t.forward_backward(&ids, 8, CONTEXT + 1, 1.0 / (8 * CONTEXT) as f64).unwrap();
        for (name, g) in t.gradients() {
            let g = g.unwrap_or_else(|| panic!("{} ({config}): `{name}` gets no gradient", E::NAME));
            if invariant.iter().any(|s| name.ends_with(s)) {
                continue;
            }
            let rows = if g.rank() >= 2 { g.dim(0).unwrap() } else { 1 };
            let g = g.reshape((rows, ())).unwrap();
            let slices = SLICES.min(rows);
            for slice in 0..slices {
                let (first, last) = (slice * rows / slices, (slice + 1) * rows / slices);
                let norm: f32 = g
                    .narrow(0, first, last - first)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar()
                    .unwrap();
                assert!(
                    norm > 0.0,
                    "{} ({config}): rows {first}..{last} of `{name}` get a zero gradient: an op on their way to \
                     the loss has no backward pass (docs/candle_no_backward.md lists candle's)",
                    E::NAME
                );
            }
        }
        gradients_match_finite_differences::<E>(&config);
    }
}

/// Row slices of a parameter the gradient checks visit: enough that each part of a fused weight
/// (q, k and v of `c_attn`) gets its own.
const SLICES: usize = 6;

/// The backward pass is the derivative of the loss: on four coordinates in each of [`SLICES`]
/// row slices of every parameter (after a few steps, so attention is no longer uniform), the
/// gradient of the batch's summed loss equals a central difference
/// `d(h) = (L(θ + h) − L(θ − h)) / 2h` to 15 % or 1e-3 absolute, at one of h = 3e-4, 1e-3 or
/// 3e-3. L is summed in f64 from the model's f32 logits: it resolves ~1e-6, d(3e-4) ~2e-3.
/// Several h, because a ReLU's kink within h of a coordinate bends d(h) (measured in
/// simplified_blocks: 0.0189 at h = 1e-4, 0.0146 at 1e-3, 0.0142 at 1e-2, for a gradient of
/// 0.0193), and a smaller h drowns in rounding instead; and a quarter of a parameter's
/// coordinates may still miss (a kink closer than any h: a ReLU unit whose input is within 1e-4 of
/// 0 for one token). A wrong backward is off at every h and most coordinates (a test doubles one
/// layer's backward and is caught).
pub fn gradients_match_finite_differences<E: Experiment>(config: &str) {
    let mut t = trainer::<E>(config, 4);
    for salt in 0..15 {
        step(&mut t, &batch(4, salt % 3), 1e-2);
    }
    let ids = batch(2, 7);
    let (rows, cols) = (2, CONTEXT + 1);
    t.forward_backward(&ids, rows, cols, 1.0).unwrap(); // the gradient of the summed loss
    let grads: HashMap<String, Tensor> =
        t.gradients().into_iter().filter_map(|(name, g)| g.map(|g| (name, g))).collect();
    let inputs: Vec<u32> = ids.chunks(cols).flat_map(|row| row[..CONTEXT].to_vec()).collect();
    let targets: Vec<usize> = ids.chunks(cols).flat_map(|row| row[1..].iter().map(|&t| t as usize)).collect();
    let summed_loss = |t: &Trainer<E>| -> f64 {
        let logits = t.logits(&inputs, rows, CONTEXT).unwrap();
        logits
            .chunks(VOCAB)
            .zip(&targets)
            .map(|(z, &target)| {
                let max = z.iter().fold(f32::MIN, |m, &x| m.max(x)) as f64;
                let sum: f64 = z.iter().map(|&x| (x as f64 - max).exp()).sum();
                max + sum.ln() - z[target] as f64
            })
            .sum()
    };
    let mut rng = SplitMix::new(11);
    for p in t.params.params() {
        let Some(grad) = grads.get(&p.name) else { continue };
        let grad: Vec<f32> = grad.flatten_all().unwrap().to_vec1().unwrap();
        let original = p.var.as_tensor().copy().unwrap();
        let values: Vec<f32> = original.flatten_all().unwrap().to_vec1().unwrap();
        let n = values.len();
        let rows_of = if p.var.rank() >= 2 { p.var.dim(0).unwrap() } else { 1 };
        let row_len = n / rows_of;
        let slices = SLICES.min(rows_of);
        let mut off = Vec::new();
        for slice in 0..slices {
            let (first, last) = (slice * rows_of / slices, (slice + 1) * rows_of / slices);
            for _ in 0..4 {
                let i = (first * row_len + rng.below(((last - first) * row_len) as u64) as usize).min(n - 1);
                let difference = |h: f32| -> f64 {
                    let loss_at = |delta: f32| {
                        let mut moved = values.clone();
                        moved[i] += delta;
                        p.var
                            .set(&Tensor::from_vec(moved, original.shape(), original.device()).unwrap())
                            .unwrap();
                        summed_loss(&t)
                    };
                    (loss_at(h) - loss_at(-h)) / (2.0 * f64::from(h))
                };
                let analytic = f64::from(grad[i]);
                let mut differences = Vec::new();
                for h in [1e-3, 3e-3, 3e-4] {
                    let d = difference(h);
                    differences.push(d);
                    if (d - analytic).abs() <= 0.15 * d.abs() + 1e-3 {
                        break;
                    }
                }
                if differences.len() == 3
                    && differences.iter().all(|d| (d - analytic).abs() > 0.15 * d.abs() + 1e-3)
                {
                    off.push(format!("element {i}: {analytic:.5} vs {differences:.5?}"));
                }
            }
        }
        p.var.set(&original).unwrap();
        let checked = 4 * slices;
        assert!(
            off.len() <= (checked / 4).max(1),
            "{} ({config}): the gradient of `{}` differs from the loss's own differences at {} of {checked} \
             coordinates (h = 1e-3, 3e-3, 3e-4): an op on its way to the loss has a wrong backward pass. {}",
            E::NAME,
            p.name,
            off.len(),
            off.join("; ")
        );
    }
}

/// Thirty steps on one batch lower its loss by a quarter or more, and every loss is finite, in
/// f32 and in bf16-mixed precision (the model's own tensors meet bf16 activations there: a part
/// that mixes dtypes fails here, not on a user's GPU).
pub fn training_lowers_the_loss<E: Experiment>(config: &str) {
    for (config, precision) in in_each_arch(config)
        .iter()
        .flat_map(|c| [(c.clone(), Precision::F32), (c.clone(), Precision::Bf16Mixed)])
    {
        let config = config.as_str();
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
    for config in in_each_arch(config) {
        prod_weights_reproduce_in::<E>(&config);
    }
}

fn prod_weights_reproduce_in<E: Experiment>(config: &str) {
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
    for config in in_each_arch(config) {
        cache_matches_recompute_in::<E>(&config);
    }
}

fn cache_matches_recompute_in<E: Experiment>(config: &str) {
    let mut t = trainer::<E>(config, 3);
    step(&mut t, &batch(2, 0), 1e-2);
    for temperature in [0.0, 0.8] {
        let s = Sampling { max_tokens: 2 * CONTEXT, temperature, top_k: 0, top_p: 1.0, seed: 5, stop: None };
        let cached = generate(&t.model, &[1, 2, 3], &s, CONTEXT, &Device::Cpu, true).unwrap();
        let recomputed = generate(&t.model, &[1, 2, 3], &s, CONTEXT, &Device::Cpu, false).unwrap();
        assert_eq!(cached, recomputed, "{} ({config}) at temperature {temperature}", E::NAME);
    }
    let ids = Tensor::from_slice(&[1u32, 2, 3], (1, 3), &Device::Cpu).unwrap();
    assert!(
        t.model.forward_cached(&ids, &mut Default::default()).unwrap().is_some(),
        "{} has a KV cache",
        E::NAME
    );
}

/// The model keys of a plugin config (size and arch), for the baseline that receives its prod
/// weights.
fn model_keys_only(config: &str) -> String {
    let map: Map<String, Value> = serde_json::from_str(&small(config)).unwrap();
    let keep: Vec<String> = GptConfig::fields().into_iter().map(|f| f.name).collect();
    Value::Object(map.into_iter().filter(|(k, _)| keep.contains(k)).collect()).to_string()
}
