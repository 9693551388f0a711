//! The training side of every experiment, written once: config resolution, loss and accuracy,
//! gradient accumulation, clipping, the optimiser step, and state as safetensors.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use plugin_api::{BatchStats, ParamCounts};
use serde_json::{Map, Value};

use crate::config::{reject_unknown_keys, FieldSpec, Knobs};
use crate::experiment::Experiment;
use crate::gpt::{GptConfig, ModelSpec};
use crate::init::ParamStore;
use crate::metrics::{outlier_kurtosis, MetricsConfig};
use crate::nn::cross_entropy_sum;
use crate::optim::{clip_factor, grad_norm, OptimConfig, Optimizer};

#[derive(Debug, thiserror::Error)]
pub enum KitError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    State(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, KitError>;

/// Where and how to build the model (the kit's view of the ABI's `RunSpec`).
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub device: String,
    pub dtype: String,
    pub seed: u64,
    pub vocab_size: usize,
    pub context_length: usize,
}

impl RunSpec {
    /// A CPU/f32 spec, for tests and tools.
    pub fn cpu(seed: u64, vocab_size: usize, context_length: usize) -> Self {
        Self { device: "cpu".into(), dtype: "f32".into(), seed, vocab_size, context_length }
    }
}

impl From<&plugin_api::RunSpec> for RunSpec {
    fn from(s: &plugin_api::RunSpec) -> Self {
        Self {
            device: s.device.to_string(),
            dtype: s.dtype.to_string(),
            seed: s.seed,
            vocab_size: s.vocab_size as usize,
            context_length: s.context_length as usize,
        }
    }
}

fn check_batch(ids: &[u32], rows: usize, cols: usize) -> Result<()> {
    if cols < 2 || ids.len() != rows * cols {
        return Err(KitError::Config(format!(
            "token batch of {} ids does not hold {rows} rows of {cols} (T + 1) ids",
            ids.len()
        )));
    }
    Ok(())
}

/// (rows, T + 1) ids → inputs (rows, T) and flattened targets (rows · T).
fn inputs_and_targets(device: &Device, ids: &[u32], rows: usize, cols: usize) -> Result<(Tensor, Tensor)> {
    check_batch(ids, rows, cols)?;
    let batch = Tensor::from_slice(ids, (rows, cols), device)?;
    let inputs = batch.narrow(1, 0, cols - 1)?.contiguous()?;
    let targets = batch.narrow(1, 1, cols - 1)?.flatten_all()?;
    Ok((inputs, targets))
}

/// The summed next-token loss of (rows, T + 1) ids, as a tensor to differentiate, and its stats.
fn loss<E: Experiment>(
    model: &E,
    device: &Device,
    ids: &[u32],
    rows: usize,
    cols: usize,
) -> Result<(Tensor, BatchStats)> {
    let (inputs, targets) = inputs_and_targets(device, ids, rows, cols)?;
    let logits = model.forward(&inputs)?; // (B, T, V)
    let v = logits.dim(2)?;
    let (loss_sum, correct) = cross_entropy_sum(&logits.reshape(((), v))?, &targets)?;
    let stats = BatchStats {
        loss_sum: f64::from(loss_sum.to_dtype(DType::F32)?.to_scalar::<f32>()?),
        correct: correct.to_scalar::<f32>()? as u64,
        tokens: (rows * (cols - 1)) as u64,
    };
    Ok((loss_sum, stats))
}

/// `cpu` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<Device> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let Some(ordinal) = name.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) else {
        return Err(KitError::Config(format!("unknown device `{name}`: use cpu or cuda:N")));
    };
    if !candle_core::utils::cuda_is_available() {
        return Err(KitError::Config(format!(
            "device {name} needs CUDA, and this build has none: rebuild with \
             `cargo build --release --workspace --features lmhost/cuda`"
        )));
    }
    Device::new_cuda(ordinal).map_err(|e| {
        KitError::Config(format!("device {name} is not available: {}", first_line(&e.to_string())))
    })
}

/// candle's errors carry a backtrace after their first line when `RUST_BACKTRACE` is set.
pub fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("").trim()
}

pub fn parse_dtype(name: &str) -> Result<DType> {
    match name {
        "f32" => Ok(DType::F32),
        "bf16" => Ok(DType::BF16),
        _ => Err(KitError::Config(format!("unknown dtype `{name}`: use f32 or bf16"))),
    }
}

/// Every knob an experiment reads: the kit's model and optimiser knobs, then its own.
pub fn config_fields<E: Experiment>() -> Vec<FieldSpec> {
    let mut fields = GptConfig::fields();
    fields.extend(OptimConfig::fields());
    fields.extend(MetricsConfig::fields());
    fields.extend(E::Config::fields());
    fields
}

/// The experiment's knobs, parsed and checked.
pub struct ResolvedConfig<E: Experiment> {
    pub gpt: GptConfig,
    pub optim: OptimConfig,
    pub metrics: MetricsConfig,
    pub own: E::Config,
}

impl<E: Experiment> ResolvedConfig<E> {
    pub fn parse(json: &str) -> Result<Self> {
        let map: Map<String, Value> = serde_json::from_str(if json.trim().is_empty() { "{}" } else { json })
            .map_err(|e| KitError::Config(format!("config is not a JSON object: {e}")))?;
        reject_unknown_keys(&map, &config_fields::<E>()).map_err(KitError::Config)?;
        let gpt = GptConfig::from_map(&map).map_err(KitError::Config)?;
        gpt.check().map_err(|e| KitError::Config(e.to_string()))?;
        Ok(Self {
            gpt,
            optim: OptimConfig::from_map(&map).map_err(KitError::Config)?,
            metrics: MetricsConfig::from_map(&map).map_err(KitError::Config)?,
            own: E::Config::from_map(&map).map_err(KitError::Config)?,
        })
    }

    /// Every knob with its value, defaults filled in.
    pub fn to_map(&self) -> Map<String, Value> {
        let mut map = self.gpt.to_map();
        map.extend(self.optim.to_map());
        map.extend(self.metrics.to_map());
        map.extend(self.own.to_map());
        map
    }
}

/// An experiment with its parameters, optimiser and accumulated gradients.
pub struct Trainer<E: Experiment> {
    pub model: E,
    pub params: ParamStore,
    pub spec: ModelSpec,
    optimizer: Optimizer,
    optim_config: OptimConfig,
    metrics_config: MetricsConfig,
    /// Metrics measured at the current step, handed out by [`extra_metrics`](Self::extra_metrics).
    metrics: Vec<(String, f64)>,
    /// Accumulated gradients, one per parameter of `params` in creation order.
    grads: Vec<Option<Tensor>>,
    device: Device,
}

impl<E: Experiment> Trainer<E> {
    pub fn new(run: &RunSpec, config_json: &str) -> Result<Self> {
        let config = ResolvedConfig::<E>::parse(config_json)?;
        let device = parse_device(&run.device)?;
        let dtype = parse_dtype(&run.dtype)?;
        let spec = ModelSpec {
            gpt: config.gpt.clone(),
            vocab_size: run.vocab_size,
            context_length: run.context_length,
        };
        let params = ParamStore::new(run.seed);
        let model = E::build(&spec, &config.own, params.var_builder(dtype, &device))?;
        let options = params.params().iter().map(|p| model.param_options(&p.name)).collect();
        let optimizer = Optimizer::new(&config.optim, params.params(), options)?;
        Ok(Self {
            grads: vec![None; params.params().len()],
            model,
            params,
            spec,
            optimizer,
            optim_config: config.optim,
            metrics_config: config.metrics,
            metrics: Vec::new(),
            device,
        })
    }

    /// Whether the step being accumulated is one whose metrics are measured, and nothing was
    /// measured for it yet (the first micro-batch).
    fn metrics_due(&self) -> bool {
        let every = self.metrics_config.metrics_every;
        every > 0
            && (self.optimizer.steps() + 1).is_multiple_of(every)
            && self.grads.iter().all(Option::is_none)
    }

    /// Metrics measured since the last call: the outlier kurtosis of every residual-stream state
    /// and the experiment's own numbers, at every `metrics_every`-th step.
    pub fn extra_metrics(&mut self) -> Result<Vec<(String, f64)>> {
        Ok(std::mem::take(&mut self.metrics))
    }

    /// The loss of (rows, T + 1) ids, split into the CPU's data-parallel shards
    /// ([`shards`](crate::shards)), each shard's gradient of `loss_sum · loss_scale` with it when
    /// `loss_scale` is given.
    fn sharded_loss(
        &self,
        ids: &[u32],
        rows: usize,
        cols: usize,
        loss_scale: Option<f64>,
    ) -> Result<Vec<(BatchStats, Option<GradStore>)>> {
        check_batch(ids, rows, cols)?;
        let ranges = crate::shards::row_ranges(rows, &self.device);
        let (model, device) = (&self.model, &self.device);
        let shard = |range: &std::ops::Range<usize>| -> Result<_> {
            let ids = &ids[range.start * cols..range.end * cols];
            let (loss_sum, stats) = loss(model, device, ids, range.len(), cols)?;
            let grads = loss_scale.map(|scale| (loss_sum * scale)?.backward()).transpose()?;
            Ok((stats, grads))
        };
        if ranges.len() == 1 {
            return Ok(vec![shard(&ranges[0])?]);
        }
        crate::shards::run(ranges.len(), |i| shard(&ranges[i])).into_iter().collect()
    }

    /// Forward and backward; adds the gradient of `loss_sum · loss_scale` to the accumulator.
    pub fn forward_backward(
        &mut self,
        ids: &[u32],
        rows: usize,
        cols: usize,
        loss_scale: f64,
    ) -> Result<BatchStats> {
        if !self.metrics_due() {
            let mut total = BatchStats::default();
            let mut stores = Vec::new();
            for (stats, grads) in self.sharded_loss(ids, rows, cols, Some(loss_scale))? {
                total += stats;
                stores.extend(grads);
            }
            self.accumulate_shards(&stores)?;
            return Ok(total);
        }
        // A step whose metrics are measured runs whole: the residual probe sees one forward.
        if let Some(gpt) = self.model.gpt() {
            gpt.probe_residuals();
        }
        let (loss_sum, stats) = loss(&self.model, &self.device, ids, rows, cols)?;
        if let Some(gpt) = self.model.gpt() {
            for (name, state) in gpt.take_residuals().unwrap_or_default() {
                self.metrics.push((format!("kurtosis.{name}"), outlier_kurtosis(&state)?));
            }
        }
        self.metrics.extend(self.model.extra_metrics()?);
        self.accumulate_shards(&[(loss_sum * loss_scale)?.backward()?])?;
        Ok(stats)
    }

    /// Adds each shard's gradients to the accumulator, in shard order. With several shards the
    /// parameters are divided between the shards' pools, so that both cores add at once (on the
    /// calling thread the adds went through candle's pool, one op at a time).
    fn accumulate_shards(&mut self, stores: &[GradStore]) -> Result<()> {
        let params = self.params.params();
        let sum = |j: usize| -> Result<Option<Tensor>> {
            let mut acc = self.grads[j].clone();
            for g in stores.iter().filter_map(|store| store.get(params[j].var.as_tensor())) {
                acc = Some(match acc {
                    Some(a) => (a + g)?,
                    None => g.clone(),
                });
            }
            Ok(acc)
        };
        let summed: Vec<(usize, Option<Tensor>)> = if stores.len() < 2 {
            (0..params.len()).map(|j| Ok((j, sum(j)?))).collect::<Result<_>>()?
        } else {
            let owners = crate::shards::balance(params.iter().map(|p| p.var.elem_count()), stores.len());
            let parts = crate::shards::run(stores.len(), |i| {
                owners.iter().enumerate().filter(|&(_, &o)| o == i).map(|(j, _)| Ok((j, sum(j)?))).collect()
            });
            parts.into_iter().collect::<Result<Vec<Vec<_>>>>()?.into_iter().flatten().collect()
        };
        for (j, g) in summed {
            self.grads[j] = g;
        }
        Ok(())
    }

    /// Clips and applies the accumulated gradients, then clears them; returns the norm before
    /// clipping.
    pub fn optimizer_step(&mut self, lr: f64) -> Result<f64> {
        let norm = grad_norm(&self.grads)?;
        self.optimizer.step_scaled(&self.grads, lr, clip_factor(norm, self.optim_config.grad_clip))?;
        self.grads.iter_mut().for_each(|g| *g = None);
        Ok(norm)
    }

    pub fn evaluate(&mut self, ids: &[u32], rows: usize, cols: usize) -> Result<BatchStats> {
        let mut total = BatchStats::default();
        for (stats, _) in self.sharded_loss(ids, rows, cols, None)? {
            total += stats;
        }
        Ok(total)
    }

    /// The accumulated gradients by parameter name (for tests and diagnostics).
    pub fn gradients(&self) -> Vec<(String, Option<Tensor>)> {
        self.params.params().into_iter().zip(&self.grads).map(|(p, g)| (p.name, g.clone())).collect()
    }

    /// Weights (`param.<name>`) and optimiser state (`optim.<name>.<slot>`) as safetensors.
    pub fn save_state(&self, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
        let mut tensors: Vec<(String, Tensor)> =
            self.params.tensors().into_iter().map(|(n, t)| (format!("param.{n}"), t)).collect();
        tensors.extend(self.optimizer.state());
        let mut metadata = metadata;
        metadata.insert("lmhost.optimizer_steps".into(), self.optimizer.steps().to_string());
        metadata.insert("lmhost.optimizer".into(), self.optim_config.optimizer.to_string());
        serialize(tensors, metadata)
    }

    pub fn load_state(&mut self, bytes: &[u8]) -> Result<()> {
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| KitError::State(format!("not a safetensors state file: {e}")))?;
        let metadata = header.metadata().clone().unwrap_or_default();
        let steps = metadata
            .get("lmhost.optimizer_steps")
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| KitError::State("state file has no lmhost.optimizer_steps".into()))?;
        let tensors = candle_core::safetensors::load_buffer(bytes, &self.device)?;
        let params: HashMap<String, Tensor> = tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_owned(), v.clone())))
            .collect();
        self.params.load(&params).map_err(|e| KitError::State(e.to_string()))?;
        self.optimizer.load_state(&tensors, steps).map_err(|e| KitError::State(e.to_string()))?;
        self.grads.iter_mut().for_each(|g| *g = None);
        Ok(())
    }

    /// Logits for ids (rows, cols), every position: (rows · cols · V) values, row-major.
    pub fn logits(&self, ids: &[u32], rows: usize, cols: usize) -> Result<Vec<f32>> {
        if ids.len() != rows * cols {
            return Err(KitError::Config(format!("{} ids do not make {rows} rows of {cols}", ids.len())));
        }
        let ids = Tensor::from_slice(ids, (rows, cols), &self.device)?;
        Ok(self.model.forward(&ids)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
    }

    /// Continues `prompt`; the new tokens.
    pub fn generate(&self, prompt: &[u32], sampling: &crate::generate::Sampling) -> Result<Vec<u32>> {
        Ok(crate::generate::generate(
            &self.model,
            prompt,
            sampling,
            self.spec.context_length,
            &self.device,
            true,
        )?)
    }

    /// Replaces the weights with those of a safetensors file named as the model's parameters
    /// (an export, prod weights into the baseline): every parameter present, nothing extra.
    pub fn load_weights(&mut self, bytes: &[u8]) -> Result<()> {
        let tensors = candle_core::safetensors::load_buffer(bytes, &self.device).map_err(|e| {
            KitError::State(format!("not a safetensors weight file: {}", first_line(&e.to_string())))
        })?;
        let names: std::collections::HashSet<String> =
            self.params.params().into_iter().map(|p| p.name).collect();
        if let Some(extra) = tensors.keys().find(|k| !names.contains(*k)) {
            return Err(KitError::State(format!(
                "the weights hold `{extra}`, which this model does not have"
            )));
        }
        self.params.load(&tensors).map_err(|e| KitError::State(e.to_string()))?;
        self.grads.iter_mut().for_each(|g| *g = None);
        Ok(())
    }

    pub fn export_prod(&self) -> Result<Vec<u8>> {
        serialize(self.model.prod_weights(&self.params)?, HashMap::new())
    }

    pub fn param_counts(&self) -> Result<ParamCounts> {
        let prod = self.model.prod_weights(&self.params)?;
        Ok(ParamCounts {
            train: self.params.count(),
            prod: prod.iter().map(|(_, t)| t.elem_count() as u64).sum(),
        })
    }
}

fn serialize(tensors: Vec<(String, Tensor)>, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
    let tensors =
        tensors.into_iter().map(|(n, t)| Ok((n, t.to_device(&Device::Cpu)?))).collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize(tensors, Some(metadata))
        .map_err(|e| KitError::State(format!("cannot write safetensors: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::Baseline;

    const CONFIG: &str = r#"{"n_layer": 2, "n_embd": 32, "n_head": 2}"#;

    fn batch(rows: usize, cols: usize, salt: u32) -> Vec<u32> {
        (0..(rows * cols) as u32).map(|i| (i * 7 + salt) % 64).collect()
    }

    fn trainer(seed: u64) -> Trainer<Baseline> {
        Trainer::<Baseline>::new(&RunSpec::cpu(seed, 64, 16), CONFIG).unwrap()
    }

    #[test]
    fn every_parameter_gets_a_gradient() {
        let mut t = trainer(0);
        // wpe starts at zero and the head's bias is zero; one step makes all of them move, so
        // look at the gradients of the second step.
        t.forward_backward(&batch(2, 17, 0), 2, 17, 1.0 / 32.0).unwrap();
        t.optimizer_step(1e-2).unwrap();
        t.forward_backward(&batch(2, 17, 3), 2, 17, 1.0 / 32.0).unwrap();
        let grads = t.gradients();
        assert_eq!(grads.len(), 6 + 2 * 12); // wte, wpe, ln_f, lm_head; 12 per block
        for (name, g) in grads {
            let g = g.unwrap_or_else(|| panic!("{name} has no gradient"));
            let norm: f32 = g.sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
            assert!(norm > 0.0, "{name} has a zero gradient");
        }
    }

    #[test]
    fn a_tied_head_is_the_token_embedding_and_trains_it_through_both_uses() {
        let config = r#"{"n_layer": 2, "n_embd": 32, "n_head": 2, "tied_head": true, "head_bias": false, "gelu": "tanh"}"#;
        let mut tied = Trainer::<Baseline>::new(&RunSpec::cpu(0, 64, 16), config).unwrap();
        let untied = trainer(0);
        assert_eq!(tied.params.count(), untied.params.count() - 64 * 32 - 64, "no head weight, no head bias");
        let ids = batch(2, 17, 0);
        tied.forward_backward(&ids, 2, 17, 1.0 / 32.0).unwrap();
        let grads = tied.gradients();
        assert!(!grads.iter().any(|(n, _)| n.starts_with("lm_head")));
        let wte = grads.iter().find(|(n, _)| n == "transformer.wte.weight").unwrap().1.clone().unwrap();
        // A token that is never an input still gets a gradient in its embedding row, from the head.
        let unused = (0..64u32).find(|t| !ids.contains(t)).unwrap();
        let row: f32 =
            wte.get(unused as usize).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar().unwrap();
        assert!(row > 0.0);
    }

    #[test]
    fn training_on_one_batch_lowers_its_loss() {
        let mut t = trainer(1);
        let b = batch(4, 17, 1);
        let first = t.evaluate(&b, 4, 17).unwrap();
        assert!((first.loss_sum / first.tokens as f64 - (64f64).ln()).abs() < 0.1, "{first:?}");
        for _ in 0..30 {
            t.forward_backward(&b, 4, 17, 1.0 / 64.0).unwrap();
            t.optimizer_step(3e-3).unwrap();
        }
        let last = t.evaluate(&b, 4, 17).unwrap();
        assert!(last.loss_sum < 0.5 * first.loss_sum, "{first:?} → {last:?}");
        assert!(last.correct > first.correct);
    }

    #[test]
    fn accumulation_equals_one_big_batch() {
        let b = batch(4, 17, 2);
        let mut whole = trainer(2);
        whole.forward_backward(&b, 4, 17, 1.0 / 64.0).unwrap();
        let n1 = whole.optimizer_step(1e-3).unwrap();
        let mut parts = trainer(2);
        parts.forward_backward(&b[..34], 2, 17, 1.0 / 64.0).unwrap();
        parts.forward_backward(&b[34..], 2, 17, 1.0 / 64.0).unwrap();
        let n2 = parts.optimizer_step(1e-3).unwrap();
        assert!((n1 - n2).abs() < 1e-5 * n1, "{n1} vs {n2}");
        let a = whole.evaluate(&b, 4, 17).unwrap().loss_sum;
        let c = parts.evaluate(&b, 4, 17).unwrap().loss_sum;
        assert!((a - c).abs() < 1e-3, "{a} vs {c}");
    }

    #[test]
    fn state_round_trips_exactly() {
        let b = batch(2, 17, 4);
        let mut a = trainer(3);
        a.forward_backward(&b, 2, 17, 1.0 / 32.0).unwrap();
        a.optimizer_step(1e-3).unwrap();
        let state = a.save_state(HashMap::from([("note".into(), "x".into())])).unwrap();
        let mut c = trainer(4); // another seed: every weight must come from the file
        c.load_state(&state).unwrap();
        for t in [&mut a, &mut c] {
            t.forward_backward(&b, 2, 17, 1.0 / 32.0).unwrap();
            t.optimizer_step(1e-3).unwrap();
        }
        assert_eq!(a.evaluate(&b, 2, 17).unwrap(), c.evaluate(&b, 2, 17).unwrap());
        assert!(matches!(c.load_state(b"garbage"), Err(KitError::State(_))));
        assert!(matches!(
            Trainer::<Baseline>::new(&RunSpec::cpu(0, 64, 16), r#"{"n_embd": 30, "n_head": 4}"#),
            Err(KitError::Config(_))
        ));
    }
}
