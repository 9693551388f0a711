//! The training side of every experiment, written once: config resolution, loss and accuracy,
//! gradient accumulation, clipping, the optimiser step, and state as safetensors.
//!
//! A step stays on the device: the loss and accuracy sums of its micro-batches and the gradient
//! norm are kept as tensors until [`take_step_stats`](Trainer::take_step_stats) reads every
//! pending step at once (the host calls it once per logging interval), so a step that is not
//! logged reads nothing back.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use plugin_api::{BatchStats, ParamCounts, StepStats};
use serde_json::{Map, Value};

use crate::config::{reject_unknown_keys, FieldSpec, Knobs};
use crate::experiment::Experiment;
use crate::gpt::{GptConfig, ModelSpec};
use crate::init::Param;
use crate::init::ParamStore;
use crate::metrics::{outlier_kurtosis, MetricsConfig};
use crate::nn::cross_entropy_sum;
use crate::optim::{OptimConfig, Optimizer};
use crate::precision::Precision;

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
    /// Resolved: never `auto`.
    pub precision: Precision,
    pub seed: u64,
    pub vocab_size: usize,
    pub context_length: usize,
}

impl RunSpec {
    /// A CPU/f32 spec, for tests and tools.
    pub fn cpu(seed: u64, vocab_size: usize, context_length: usize) -> Self {
        Self { device: "cpu".into(), precision: Precision::F32, seed, vocab_size, context_length }
    }

    /// The kit's view of what the host sent; its `dtype` field carries the precision.
    pub fn from_abi(s: &plugin_api::RunSpec) -> Result<Self> {
        Ok(Self {
            device: s.device.to_string(),
            precision: Precision::parse(s.dtype.as_str()).map_err(KitError::Config)?,
            seed: s.seed,
            vocab_size: s.vocab_size as usize,
            context_length: s.context_length as usize,
        })
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

/// Loss and accuracy sums of some tokens, kept on the device until they are read.
#[derive(Clone)]
struct Sums {
    /// Σ cross-entropy, f32 scalar.
    loss: Tensor,
    /// How many predictions were the argmax, f32 scalar.
    correct: Tensor,
    tokens: u64,
}

impl Sums {
    fn add(self, other: Sums) -> Result<Sums> {
        Ok(Sums {
            loss: (self.loss + other.loss)?,
            correct: (self.correct + other.correct)?,
            tokens: self.tokens + other.tokens,
        })
    }

    fn sum(parts: impl IntoIterator<Item = Sums>) -> Result<Option<Sums>> {
        parts.into_iter().try_fold(None, |acc: Option<Sums>, s| {
            Ok(Some(match acc {
                Some(acc) => acc.add(s)?,
                None => s,
            }))
        })
    }

    /// Reads them back (two reads).
    fn read(&self) -> Result<BatchStats> {
        Ok(BatchStats {
            loss_sum: f64::from(self.loss.to_dtype(DType::F32)?.to_scalar::<f32>()?),
            correct: self.correct.to_dtype(DType::F32)?.to_scalar::<f32>()? as u64,
            tokens: self.tokens,
        })
    }
}

/// The summed next-token loss of (rows, T + 1) ids, as a tensor to differentiate, and its sums;
/// the loss in f32 whatever the model computes in.
fn loss<E: Experiment>(
    model: &E,
    device: &Device,
    ids: &[u32],
    rows: usize,
    cols: usize,
) -> Result<(Tensor, Sums)> {
    let (inputs, targets) = inputs_and_targets(device, ids, rows, cols)?;
    let logits = model.forward(&inputs)?; // (B, T, V)
    let v = logits.dim(2)?;
    let (loss_sum, correct) = cross_entropy_sum(&logits.reshape(((), v))?.to_dtype(DType::F32)?, &targets)?;
    let sums = Sums { loss: loss_sum.detach(), correct, tokens: (rows * (cols - 1)) as u64 };
    Ok((loss_sum, sums))
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
    // The driver and CUDA's libraries are loaded now, by cudarc, which panics when they are
    // missing (a CUDA build on a machine without an NVIDIA driver): said in one line instead.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let device = std::panic::catch_unwind(|| Device::new_cuda(ordinal));
    std::panic::set_hook(hook);
    match device {
        Ok(device) => device.map_err(|e| {
            KitError::Config(format!("device {name} is not available: {}", first_line(&e.to_string())))
        }),
        Err(panic) => {
            let why = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(KitError::Config(format!(
                "device {name} is not available: CUDA could not be loaded ({}); is there an NVIDIA driver, and CUDA 13's libraries on LD_LIBRARY_PATH?",
                first_line(&why)
            )))
        }
    }
}

/// candle's errors carry a backtrace after their first line when `RUST_BACKTRACE` is set.
pub fn first_line(message: &str) -> &str {
    message.lines().next().unwrap_or("").trim()
}

/// The knobs the kit declares for every experiment: the model's size, the optimiser, the metrics.
pub fn kit_fields() -> Vec<FieldSpec> {
    let mut fields = GptConfig::fields();
    fields.extend(OptimConfig::fields());
    fields.extend(MetricsConfig::fields());
    fields
}

/// Every knob an experiment reads: the kit's, then its own.
pub fn config_fields<E: Experiment>() -> Vec<FieldSpec> {
    let mut fields = kit_fields();
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

/// A step applied but not read back yet: its number, loss sums and gradient norm, on the device.
struct Applied {
    step: u64,
    sums: Option<Sums>,
    grad_norm: Tensor,
}

/// The gradients accumulated over a step's micro-batches: each parameter's own (the CPU's
/// fused AdamW reads them so), or gathered into one buffer (a constant number of ops per
/// micro-batch, whatever the number of parameters).
enum Gradients {
    PerParam(Vec<Option<Tensor>>),
    /// One sum per buffer of the store, and which parameters had a gradient.
    Gathered {
        sum: Option<Vec<Tensor>>,
        present: Vec<bool>,
    },
}

impl Gradients {
    fn clear(&mut self) {
        match self {
            Gradients::PerParam(grads) => grads.iter_mut().for_each(|g| *g = None),
            Gradients::Gathered { sum, present } => {
                *sum = None;
                present.iter_mut().for_each(|p| *p = false);
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Gradients::PerParam(grads) => grads.iter().all(Option::is_none),
            Gradients::Gathered { sum, .. } => sum.is_none(),
        }
    }
}

/// An experiment with its parameters, optimiser and accumulated gradients.
pub struct Trainer<E: Experiment> {
    pub model: E,
    pub params: ParamStore,
    pub spec: ModelSpec,
    optimizer: Optimizer,
    metrics_config: MetricsConfig,
    /// Metrics measured at the current step, handed out by [`extra_metrics`](Self::extra_metrics).
    metrics: Vec<(String, f64)>,
    grads: Gradients,
    /// The loss sums of the step being accumulated.
    step_sums: Option<Sums>,
    /// Steps applied but not read yet.
    pending: Vec<Applied>,
    precision: Precision,
    device: Device,
}

impl<E: Experiment> Trainer<E> {
    pub fn new(run: &RunSpec, config_json: &str) -> Result<Self> {
        let config = ResolvedConfig::<E>::parse(config_json)?;
        let device = parse_device(&run.device)?;
        let precision = run.precision.resolve(&run.device);
        // TF32 matrix products (cuBLAS) in this copy of candle: on for tf32, off otherwise.
        candle_core::cuda::set_gemm_reduced_precision_f32(precision == Precision::Tf32);
        let spec = ModelSpec {
            matmul_dtype: precision.compute_dtype(),
            ..ModelSpec::new(config.gpt.clone(), run.vocab_size, run.context_length)
        };
        let params = ParamStore::new(run.seed);
        let model = E::build(&spec, &config.own, params.var_builder(DType::F32, &device))?;
        params.finish()?;
        let options = params.params().iter().map(|p| model.param_options(&p.name)).collect();
        let optimizer = Optimizer::new(&config.optim, &params, options)?;
        let count = params.params().len();
        let grads = if optimizer.takes_gathered_gradients() {
            Gradients::Gathered { sum: None, present: vec![false; count] }
        } else {
            Gradients::PerParam(vec![None; count])
        };
        Ok(Self {
            grads,
            model,
            params,
            spec,
            optimizer,
            metrics_config: config.metrics,
            metrics: Vec::new(),
            step_sums: None,
            pending: Vec::new(),
            precision,
            device,
        })
    }

    /// The arithmetic the model trains in (resolved).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Whether the step being accumulated is one whose metrics are measured, and nothing was
    /// measured for it yet (the first micro-batch).
    fn metrics_due(&self) -> bool {
        let every = self.metrics_config.metrics_every;
        every > 0 && (self.optimizer.steps() + 1).is_multiple_of(every) && self.grads.is_empty()
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
    ) -> Result<Vec<(Sums, Option<GradStore>)>> {
        check_batch(ids, rows, cols)?;
        let ranges = crate::shards::row_ranges(rows, &self.device);
        let (model, device) = (&self.model, &self.device);
        let shard = |range: &std::ops::Range<usize>| -> Result<_> {
            let ids = &ids[range.start * cols..range.end * cols];
            let (loss_sum, sums) = loss(model, device, ids, range.len(), cols)?;
            let grads = loss_scale.map(|scale| (loss_sum * scale)?.backward()).transpose()?;
            Ok((sums, grads))
        };
        if ranges.len() == 1 {
            return Ok(vec![shard(&ranges[0])?]);
        }
        crate::shards::run(ranges.len(), |i| shard(&ranges[i])).into_iter().collect()
    }

    /// Forward and backward of one micro-batch; adds the gradient of `loss_sum · loss_scale` to
    /// the accumulator and the micro-batch's loss sums to the step's, all on the device.
    pub fn accumulate(&mut self, ids: &[u32], rows: usize, cols: usize, loss_scale: f64) -> Result<()> {
        let sums = self.micro_batch(ids, rows, cols, loss_scale)?;
        self.step_sums = Sums::sum(self.step_sums.take().into_iter().chain(Some(sums)))?;
        Ok(())
    }

    /// [`accumulate`](Self::accumulate), and this micro-batch's sums read back.
    pub fn forward_backward(
        &mut self,
        ids: &[u32],
        rows: usize,
        cols: usize,
        loss_scale: f64,
    ) -> Result<BatchStats> {
        let sums = self.micro_batch(ids, rows, cols, loss_scale)?;
        let stats = sums.read()?;
        self.step_sums = Sums::sum(self.step_sums.take().into_iter().chain(Some(sums)))?;
        Ok(stats)
    }

    fn micro_batch(&mut self, ids: &[u32], rows: usize, cols: usize, loss_scale: f64) -> Result<Sums> {
        if self.metrics_due() {
            self.measure(ids, rows, cols)?;
        }
        let mut sums = Vec::new();
        let mut stores = Vec::new();
        for (s, grads) in self.sharded_loss(ids, rows, cols, Some(loss_scale))? {
            sums.push(s);
            stores.extend(grads);
        }
        self.accumulate_shards(&stores)?;
        Ok(Sums::sum(sums)?.expect("a batch has a shard"))
    }

    /// The step's metrics, from a forward pass of its first micro-batch of its own (whole, so
    /// that the residual probe sees every row), outside the training step: measuring never
    /// changes what is trained or in what order gradients are summed.
    fn measure(&mut self, ids: &[u32], rows: usize, cols: usize) -> Result<()> {
        if let Some(gpt) = self.model.gpt() {
            gpt.probe_residuals();
            let (inputs, _) = inputs_and_targets(&self.device, ids, rows, cols)?;
            gpt.forward(&inputs)?;
            for (name, state) in gpt.take_residuals().unwrap_or_default() {
                self.metrics.push((format!("kurtosis.{name}"), outlier_kurtosis(&state)?));
            }
        }
        self.metrics.extend(self.model.extra_metrics()?);
        Ok(())
    }

    /// Adds each shard's gradients to the accumulator, in shard order. Per parameter, with
    /// several shards, the parameters are divided between the shards' pools so that both cores
    /// add at once (on the calling thread the adds went through candle's pool, one op at a time).
    fn accumulate_shards(&mut self, stores: &[GradStore]) -> Result<()> {
        let params = self.params.params();
        let grads = match &mut self.grads {
            Gradients::PerParam(grads) => grads,
            Gradients::Gathered { sum, present } => {
                for store in stores {
                    let mine: Vec<Option<Tensor>> =
                        params.iter().map(|p| store.get(&p.compute).cloned()).collect();
                    for (has, g) in present.iter_mut().zip(&mine) {
                        *has |= g.is_some();
                    }
                    let gathered = self.optimizer.gather(&mine)?;
                    *sum = Some(match sum.take() {
                        Some(s) => {
                            s.iter().zip(gathered).map(|(a, b)| a + b).collect::<candle_core::Result<_>>()?
                        }
                        None => gathered,
                    });
                }
                return Ok(());
            }
        };
        let sum = |j: usize| -> Result<Option<Tensor>> {
            let mut acc = grads[j].clone();
            for g in stores.iter().filter_map(|store| store.get(&params[j].compute)) {
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
            let owners = crate::shards::balance(params.iter().map(Param::elem_count), stores.len());
            let parts = crate::shards::run(stores.len(), |i| {
                owners.iter().enumerate().filter(|&(_, &o)| o == i).map(|(j, _)| Ok((j, sum(j)?))).collect()
            });
            parts.into_iter().collect::<Result<Vec<Vec<_>>>>()?.into_iter().flatten().collect()
        };
        for (j, g) in summed {
            grads[j] = g;
        }
        Ok(())
    }

    /// Clips and applies the accumulated gradients, then clears them; the step's sums and
    /// gradient norm stay on the device for [`take_step_stats`](Self::take_step_stats).
    pub fn apply_step(&mut self, lr: f64) -> Result<()> {
        let norm = match &self.grads {
            Gradients::PerParam(grads) => self.optimizer.step(grads, lr)?,
            Gradients::Gathered { sum: Some(sum), present } => {
                self.optimizer.step_gathered(sum, present, lr)?
            }
            Gradients::Gathered { sum: None, .. } => {
                return Err(KitError::Config("an optimizer step without a gradient: accumulate first".into()))
            }
        };
        self.grads.clear();
        self.params.sync_compute()?;
        self.pending.push(Applied {
            step: self.optimizer.steps(),
            sums: self.step_sums.take(),
            grad_norm: norm,
        });
        Ok(())
    }

    /// [`apply_step`](Self::apply_step), and its gradient norm (before clipping) read back.
    pub fn optimizer_step(&mut self, lr: f64) -> Result<f64> {
        self.apply_step(lr)?;
        let applied = self.pending.pop().expect("pushed above");
        Ok(applied.grad_norm.to_dtype(DType::F64)?.to_scalar::<f64>()?)
    }

    /// Every step applied since the last call: its loss sums and gradient norm, read back in
    /// three transfers however many steps there are.
    pub fn take_step_stats(&mut self) -> Result<Vec<StepStats>> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        // Each column of every step stacked into one f64 tensor, read in one transfer.
        let column = |value: fn(&Applied) -> Option<&Tensor>| -> Result<Vec<f64>> {
            let parts = pending
                .iter()
                .map(|a| match value(a) {
                    Some(t) => Ok(t.to_dtype(DType::F64)?.to_device(&self.device)?),
                    None => Ok(Tensor::zeros((), DType::F64, &self.device)?),
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(Tensor::stack(&parts, 0)?.to_vec1::<f64>()?)
        };
        let losses = column(|a| a.sums.as_ref().map(|s| &s.loss))?;
        let correct = column(|a| a.sums.as_ref().map(|s| &s.correct))?;
        let norms = column(|a| Some(&a.grad_norm))?;
        Ok(pending
            .iter()
            .zip(losses.iter().zip(&correct).zip(&norms))
            .map(|(a, ((&loss_sum, &correct), &grad_norm))| StepStats {
                step: a.step,
                batch: BatchStats {
                    loss_sum,
                    correct: correct as u64,
                    tokens: a.sums.as_ref().map_or(0, |s| s.tokens),
                },
                grad_norm,
            })
            .collect())
    }

    pub fn evaluate(&mut self, ids: &[u32], rows: usize, cols: usize) -> Result<BatchStats> {
        let sums = self.sharded_loss(ids, rows, cols, None)?.into_iter().map(|(s, _)| s);
        Sums::sum(sums)?.expect("a batch has a shard").read()
    }

    /// The accumulated gradients by parameter name (for tests and diagnostics): each its own,
    /// or sliced out of the gathered buffer.
    pub fn gradients(&self) -> Vec<(String, Option<Tensor>)> {
        let params = self.params.params();
        match &self.grads {
            Gradients::PerParam(grads) => {
                params.into_iter().zip(grads).map(|(p, g)| (p.name, g.clone())).collect()
            }
            Gradients::Gathered { sum, present } => params
                .into_iter()
                .zip(present)
                .map(|(p, &has)| {
                    let g = sum.as_ref().filter(|_| has).and_then(|s| {
                        s[p.buffer]
                            .narrow(0, p.offset, p.elem_count())
                            .and_then(|g| g.reshape(p.var.shape()))
                            .ok()
                    });
                    (p.name, g)
                })
                .collect(),
        }
    }

    /// Weights (`param.<name>`, the f32 masters) and optimiser state (`optim.<name>.<slot>`)
    /// as safetensors.
    pub fn save_state(&self, metadata: HashMap<String, String>) -> Result<Vec<u8>> {
        let mut tensors: Vec<(String, Tensor)> =
            self.params.tensors().into_iter().map(|(n, t)| (format!("param.{n}"), t)).collect();
        tensors.extend(self.optimizer.state()?);
        let mut metadata = metadata;
        metadata.insert("lmhost.optimizer_steps".into(), self.optimizer.steps().to_string());
        metadata.insert("lmhost.optimizer".into(), self.optimizer.kind().to_string());
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
        self.grads.clear();
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
        self.grads.clear();
        Ok(())
    }

    pub fn export_prod(&self) -> Result<Vec<u8>> {
        serialize(self.model.prod_weights(&self.params)?, HashMap::new())
    }

    /// The training FLOPs per token of the model's matrix products: those of one forward pass
    /// over a context of distinct tokens (`0, 1, …` modulo the vocabulary), as candle's `matmul`
    /// and the kit's fused kernels count them, times 3 for forward and backward (the backward
    /// of a product is two products of its size), per token. Attention's causal half is
    /// counted, as the kernels compute it (PaLM, appendix B).
    pub fn flops_per_token(&self) -> Result<f64> {
        let t = self.spec.context_length;
        let ids: Vec<u32> = (0..t).map(|i| (i % self.spec.vocab_size) as u32).collect();
        let ids = Tensor::from_slice(&ids, (1, t), &self.device)?;
        let before = candle_core::lmhost::flops::matmul();
        self.model.forward(&ids)?;
        let forward = candle_core::lmhost::flops::matmul() - before;
        Ok(3.0 * forward as f64 / t as f64)
    }

    /// Every parameter and how the optimiser updates it ([`Optimizer::treatment`]).
    pub fn parameters(&self) -> Vec<Value> {
        self.optimizer.treatment()
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
    let bytes = safetensors::tensor::serialize(tensors, Some(metadata))
        .map_err(|e| KitError::State(format!("cannot write safetensors: {e}")))?;
    canonical(bytes)
}

/// The same safetensors file with its header's metadata in key order: safetensors writes it in
/// a hash map's order, which differs from process to process, and identical states must be
/// identical files (a checkpoint's hash names its content).
fn canonical(mut bytes: Vec<u8>) -> Result<Vec<u8>> {
    let bad = |what: &str| KitError::State(format!("cannot write safetensors: {what}"));
    let n = u64::from_le_bytes(bytes.get(..8).ok_or_else(|| bad("no header"))?.try_into().expect("8 bytes"))
        as usize;
    let header = bytes.get(8..8 + n).ok_or_else(|| bad("a short header"))?;
    let mut json: Map<String, Value> = serde_json::from_slice(header).map_err(|e| bad(&e.to_string()))?;
    if let Some(Value::Object(metadata)) = json.get_mut("__metadata__") {
        let mut entries: Vec<(String, Value)> = std::mem::take(metadata).into_iter().collect();
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        metadata.extend(entries);
    }
    let mut text = serde_json::to_string(&json).map_err(|e| bad(&e.to_string()))?.into_bytes();
    if text.len() > n {
        return Err(bad("the header grew"));
    }
    text.resize(n, b' '); // safetensors pads its header with spaces to its length
    bytes[8..8 + n].copy_from_slice(&text);
    Ok(bytes)
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
    fn measuring_metrics_changes_no_number() {
        let losses = |metrics_every: u64| {
            let config =
                format!(r#"{{"n_layer": 2, "n_embd": 32, "n_head": 2, "metrics_every": {metrics_every}}}"#);
            let mut t = Trainer::<Baseline>::new(&RunSpec::cpu(5, 64, 16), &config).unwrap();
            let mut out = Vec::new();
            for step in 0..4 {
                out.push(t.forward_backward(&batch(4, 17, step), 4, 17, 1.0 / 64.0).unwrap().loss_sum);
                t.optimizer_step(1e-2).unwrap();
                t.extra_metrics().unwrap();
            }
            out
        };
        assert_eq!(losses(1), losses(1000), "metrics_every=1 and =1000 train the same numbers");
        let mut t = Trainer::<Baseline>::new(
            &RunSpec::cpu(5, 64, 16),
            r#"{"n_layer": 2, "n_embd": 32, "n_head": 2, "metrics_every": 1}"#,
        )
        .unwrap();
        t.forward_backward(&batch(4, 17, 0), 4, 17, 1.0 / 64.0).unwrap();
        assert!(t.extra_metrics().unwrap().iter().any(|(n, v)| n == "kurtosis.final" && v.is_finite()));
    }

    #[test]
    fn equal_states_are_equal_files() {
        let metadata =
            || HashMap::from([("b".into(), "2".into()), ("a".into(), "1".into()), ("c".into(), "3".into())]);
        let states: Vec<Vec<u8>> = (0..4).map(|_| trainer(3).save_state(metadata()).unwrap()).collect();
        assert!(states.windows(2).all(|w| w[0] == w[1]), "the header's metadata is in key order");
        let (_, header) = safetensors::SafeTensors::read_metadata(&states[0]).unwrap();
        assert_eq!(header.metadata().as_ref().unwrap()["a"], "1");
    }

    #[test]
    fn state_round_trips_exactly() {
        let b = batch(2, 17, 4);
        for precision in [Precision::F32, Precision::Bf16Mixed] {
            let make = |seed| {
                let spec = RunSpec { precision, ..RunSpec::cpu(seed, 64, 16) };
                Trainer::<Baseline>::new(&spec, CONFIG).unwrap()
            };
            let mut a = make(3);
            a.forward_backward(&b, 2, 17, 1.0 / 32.0).unwrap();
            a.optimizer_step(1e-3).unwrap();
            let state = a.save_state(HashMap::from([("note".into(), "x".into())])).unwrap();
            let mut c = make(4); // another seed: every weight must come from the file
            c.load_state(&state).unwrap();
            for t in [&mut a, &mut c] {
                t.forward_backward(&b, 2, 17, 1.0 / 32.0).unwrap();
                t.optimizer_step(1e-3).unwrap();
            }
            assert_eq!(a.evaluate(&b, 2, 17).unwrap(), c.evaluate(&b, 2, 17).unwrap(), "{precision}");
        }
        assert!(matches!(trainer(4).load_state(b"garbage"), Err(KitError::State(_))));
        assert!(matches!(
            Trainer::<Baseline>::new(&RunSpec::cpu(0, 64, 16), r#"{"n_embd": 30, "n_head": 4}"#),
            Err(KitError::Config(_))
        ));
    }
}
