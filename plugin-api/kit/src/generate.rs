//! Sampling text from a model: temperature, top-k and top-p (nucleus) sampling, greedy at
//! temperature 0, deterministic for a seed; through the model's KV cache when it has one. Past
//! the context length the window slides (the cache restarts on the last `context` tokens), so the
//! cached and the recomputing paths give the same tokens.

use candle_core::{DType, Device, Result, Tensor};

use crate::experiment::Experiment;
use crate::init::SplitMix;
use crate::parts::KvCache;

#[derive(Debug, Clone, PartialEq)]
pub struct Sampling {
    pub max_tokens: usize,
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    /// Keep only the k most likely tokens (0: all).
    pub top_k: usize,
    /// Keep the smallest set of tokens whose probability reaches p (1: all).
    pub top_p: f64,
    pub seed: u64,
    /// Stop after producing this token.
    pub stop: Option<u32>,
}

/// The next token from one position's logits.
pub fn sample(logits: &[f32], s: &Sampling, rng: &mut SplitMix) -> u32 {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &l)| if l > best.1 { (i, l) } else { best })
            .0 as u32
    };
    if s.temperature <= 0.0 {
        return argmax();
    }
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let mut probs: Vec<(u32, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &l)| (i as u32, ((l as f64 - max) / s.temperature).exp()))
        .collect();
    // Most likely first; ties by id, so the order never depends on the sort.
    probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    if s.top_k > 0 {
        probs.truncate(s.top_k);
    }
    if s.top_p < 1.0 {
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut acc = 0.0;
        let keep = probs
            .iter()
            .position(|p| {
                acc += p.1 / total;
                acc >= s.top_p
            })
            .map_or(probs.len(), |i| i + 1);
        probs.truncate(keep);
    }
    let total: f64 = probs.iter().map(|p| p.1).sum();
    let mut u = rng.uniform() * total;
    for &(id, p) in &probs {
        if u < p {
            return id;
        }
        u -= p;
    }
    probs.last().map_or_else(argmax, |p| p.0)
}

/// Continues `prompt` by up to `s.max_tokens` tokens (the new ones are returned). `use_cache`
/// false recomputes the whole window for every token: the reference the cache must match.
pub fn generate<E: Experiment>(
    model: &E,
    prompt: &[u32],
    s: &Sampling,
    context: usize,
    device: &Device,
    use_cache: bool,
) -> Result<Vec<u32>> {
    if prompt.is_empty() {
        candle_core::bail!("generation needs a prompt of at least one token");
    }
    let window = |tokens: &[u32]| tokens[tokens.len().saturating_sub(context)..].to_vec();
    let last_row = |logits: Tensor| -> Result<Vec<f32>> {
        let t = logits.dim(1)?;
        logits.get(0)?.get(t - 1)?.to_dtype(DType::F32)?.to_vec1::<f32>()
    };
    let mut rng = SplitMix::new(s.seed);
    let mut tokens = prompt.to_vec();
    let mut cache = KvCache::default();
    let mut pending = window(prompt);
    let mut cached = use_cache;
    let mut out = Vec::new();
    while out.len() < s.max_tokens {
        let mut logits = None;
        if cached {
            if cache.len + pending.len() > context {
                cache = KvCache::default();
                pending = window(&tokens);
            }
            let ids = Tensor::from_slice(&pending, (1, pending.len()), device)?;
            logits = model.forward_cached(&ids, &mut cache)?;
            cached = logits.is_some();
        }
        let logits = match logits {
            Some(l) => l,
            None => {
                let w = window(&tokens);
                model.forward(&Tensor::from_slice(&w, (1, w.len()), device)?)?
            }
        };
        let next = sample(&last_row(logits)?, s, &mut rng);
        out.push(next);
        tokens.push(next);
        pending = vec![next];
        if s.stop == Some(next) {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::Baseline;
    use crate::trainer::{RunSpec, Trainer};

    fn settings(temperature: f64) -> Sampling {
        Sampling { max_tokens: 40, temperature, top_k: 0, top_p: 1.0, seed: 7, stop: None }
    }

    #[test]
    fn greedy_takes_the_argmax_and_filters_narrow_the_choice() {
        let logits = [0.0f32, 3.0, 1.0, 2.9];
        let mut rng = SplitMix::new(1);
        assert_eq!(sample(&logits, &settings(0.0), &mut rng), 1);
        let top1 = Sampling { top_k: 1, ..settings(1.0) };
        assert!((0..50).all(|_| sample(&logits, &top1, &mut rng) == 1));
        let nucleus = Sampling { top_p: 0.5, ..settings(1.0) };
        assert!((0..50).all(|_| [1, 3].contains(&sample(&logits, &nucleus, &mut rng))));
        let draws: Vec<u32> = (0..400).map(|_| sample(&logits, &settings(1.0), &mut rng)).collect();
        assert!([0, 1, 2, 3].iter().all(|t| draws.contains(t)), "every token can be drawn");
    }

    #[test]
    fn the_cache_gives_the_same_tokens_as_recomputing_even_past_the_context() {
        let t = Trainer::<Baseline>::new(
            &RunSpec::cpu(3, 50, 16),
            r#"{"n_layer": 2, "n_embd": 32, "n_head": 2}"#,
        )
        .unwrap();
        let prompt = [1u32, 5, 9];
        for temperature in [0.0, 0.9] {
            let s = settings(temperature);
            let cached = generate(&t.model, &prompt, &s, 16, &Device::Cpu, true).unwrap();
            let recomputed = generate(&t.model, &prompt, &s, 16, &Device::Cpu, false).unwrap();
            assert_eq!(cached.len(), 40, "40 tokens, far past the context of 16");
            assert_eq!(cached, recomputed, "temperature {temperature}");
        }
        let again = generate(&t.model, &prompt, &settings(0.9), 16, &Device::Cpu, true).unwrap();
        assert_eq!(
            again,
            generate(&t.model, &prompt, &settings(0.9), 16, &Device::Cpu, true).unwrap(),
            "deterministic for a seed"
        );
        let stop = Sampling { stop: Some(again[2]), ..settings(0.9) };
        assert_eq!(generate(&t.model, &prompt, &stop, 16, &Device::Cpu, true).unwrap().len(), 3);
    }

    #[test]
    fn cached_logits_equal_the_full_forward() {
        let t = Trainer::<Baseline>::new(
            &RunSpec::cpu(4, 50, 16),
            r#"{"n_layer": 2, "n_embd": 32, "n_head": 2}"#,
        )
        .unwrap();
        let ids: Vec<u32> = (0..10).map(|i| (i * 7 % 50) as u32).collect();
        let full = t.model.forward(&Tensor::from_slice(&ids, (1, 10), &Device::Cpu).unwrap()).unwrap();
        let mut cache = KvCache::default();
        let head = t
            .model
            .forward_cached(&Tensor::from_slice(&ids[..6], (1, 6), &Device::Cpu).unwrap(), &mut cache)
            .unwrap()
            .unwrap();
        let tail = t
            .model
            .forward_cached(&Tensor::from_slice(&ids[6..], (1, 4), &Device::Cpu).unwrap(), &mut cache)
            .unwrap()
            .unwrap();
        let joined = Tensor::cat(&[head, tail], 1).unwrap();
        let diff = (full - joined).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "{diff}");
        assert_eq!(cache.len, 10);
    }
}
