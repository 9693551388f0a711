//! The training driver, run inside a worker process for one arm. The host owns *when* and *what
//! data*: micro-batches and accumulation, the learning rate of each step, evaluation on the fixed
//! validation set, checkpoints and stats. The plugin owns *what model*.

use std::path::Path;
use std::time::{Duration, Instant};

use abi_stable::std_types::{RSlice, RStr};
use anyhow::{Context, Result};
use datasets::{mixed_batch, validation_windows, PreparedData};
use plugin_api::{BatchStats, StepSettings, StepStats, TokenBatch};
use reports::{Split, StatsRow, StatsWriter};

use crate::checkpoints::Checkpoints;
use crate::config::RunConfig;
use crate::events::{emit, Event};
use crate::model::Model;
use crate::plugin::{Plugin, PluginSource};
use crate::run_store::{self, RunRecord, RunResult, Status};
use crate::schedule::LrSchedule;

/// Why training stopped before its last step.
#[derive(Debug, thiserror::Error)]
pub enum Stop {
    #[error("{0}")]
    Diverged(String),
    #[error("{0}")]
    Failed(String),
    #[error("{0}")]
    Interrupted(String),
}

/// Runs the arm described by `dir/run.json` to its end, keeping `run.json` and the stats
/// current, and reporting progress as [`Event`]s on stdout. A resumed run continues from the
/// step its last `resumes` entry names, under the config `lmhost resume` recorded.
pub fn run_worker(dir: &Path, resume: bool) -> Result<()> {
    // Held until this process ends: a second process cannot write this run while it trains.
    let _lock = run_store::RunLock::acquire(dir)?;
    let mut record = run_store::read_record(dir)?;
    record.status = Status::Running;
    run_store::write_record(dir, &record)?;
    crate::interrupt::set_run(dir);
    let outcome = setup_and_train(dir, &mut record, resume);
    let (status, error) = match &outcome {
        Ok(()) => (Status::Finished, None),
        Err(e) => match e.downcast_ref::<Stop>() {
            Some(Stop::Diverged(m)) => (Status::Diverged, Some(m.clone())),
            Some(Stop::Interrupted(m)) => (Status::Interrupted, Some(m.clone())),
            _ => (Status::Failed, Some(format!("{e:#}"))),
        },
    };
    record.status = status;
    record.error = error.clone();
    run_store::write_record(dir, &record)?;
    match error {
        None => {
            emit(&Event::Finished { result: record.result.clone().unwrap_or_default() });
            Ok(())
        }
        Some(message) => {
            emit(&Event::Stopped { status, message: message.clone() });
            Err(anyhow::anyhow!(message))
        }
    }
}

fn setup_and_train(dir: &Path, record: &mut RunRecord, resume: bool) -> Result<()> {
    if let (PluginSource::Library { path }, Some(expected)) = (&record.plugin.source, &record.plugin.sha256) {
        if &run_store::sha256_file(path)? != expected {
            anyhow::bail!("{} changed since this run was set up; start a new run", path.display());
        }
    }
    let plugin = Plugin::open(&record.plugin.source)?;
    let data = PreparedData::load(&record.data.cache_dir)?;
    if data.manifest.tokenizer_fingerprint != record.data.manifest.tokenizer_fingerprint {
        anyhow::bail!("the token cache {} changed since this run was set up", data.dir.display());
    }
    let config = record.config.run_config()?;
    let spec = config.run_spec(data.manifest.vocab_size);
    let model = plugin
        .create(&spec, &record.config.model)
        .map_err(|e| Stop::Failed(format!("{} {e}", plugin.description.name)))?;
    let mut model = Model::new(model, &plugin.description.api_version);
    // Plugins built before plugin-api 0.1.3 do not count: their runs have no FLOPs axis.
    let flops_per_token = model.flops_per_token().into_result().ok();
    if !resume && !config.init.is_empty() {
        load_init(&mut model, &config)?;
    }
    let stats_path = dir.join("stats.arrows");
    let (stats, start) = if resume {
        resume_point(dir, record, &mut model, &config)?
    } else {
        (StatsWriter::create(&stats_path, &stats_identity(record))?, Start::default())
    };
    let val_ids = validation_windows(&data.val, config.eval_windows, config.context_length);
    let test_ids =
        data.test.as_ref().map(|t| validation_windows(t, config.eval_windows, config.context_length));
    let stages = stages(record, &config, data.train)?;
    let marks = record.resumes.iter().filter_map(|r| Some((r.from_step, r.mark()?))).collect();
    let mut training = Training {
        dir,
        config,
        stages,
        marks,
        model,
        val_ids,
        test_ids,
        stats: Some(stats),
        plugin_name: plugin.description.name.clone(),
        flops_per_token,
        started: Instant::now(),
        train_time: Duration::ZERO,
        tokens: start.tokens,
        best_val: start.best_val,
        start,
    };
    let result = training.run(record);
    training.stats.take().map(|s| s.finish()).transpose()?;
    // The same rows as a file pandas, polars and DuckDB read as it is; the stream stays the log.
    if let Err(e) = reports::stats::write_table(&stats_path) {
        tracing::warn!("no stats.parquet: {e}");
    }
    result
}

/// Replaces the seeded initialisation with the weights `init=` names.
fn load_init(model: &mut Model, config: &RunConfig) -> Result<()> {
    let weights = match config.init.strip_prefix("hf:") {
        Some(dir) => {
            let dir = Path::new(dir);
            crate::hf::HfModel::read(dir)?.weights_file(dir, config.context_length)?
        }
        None => {
            std::fs::read(&config.init).with_context(|| format!("init={}: cannot read it", config.init))?
        }
    };
    model.load_weights(RSlice::from_slice(&weights)).into_result().map_err(|e| {
        anyhow::anyhow!(
            "init={}: {e}; init loads weights named as the model's own parameters (the baseline's layout)",
            config.init
        )
    })
}

/// Where training starts: at step 0, or where a resumed run's last checkpoint left it.
struct Start {
    step: u64,
    tokens: u64,
    wall_s: f64,
    /// The last validation loss and accuracy before it.
    val: Option<(f64, f64)>,
    /// The lowest validation loss after step 0 before it.
    best_val: f64,
}

impl Default for Start {
    fn default() -> Self {
        Self { step: 0, tokens: 0, wall_s: 0.0, val: None, best_val: f64::INFINITY }
    }
}

/// Loads the checkpoint the last `resumes` entry names into `model` (none at step 0) and rewinds
/// the stats to its step (rows measured after it are dropped and trained again, so no step is
/// counted twice); records how many rows were dropped.
fn resume_point(
    dir: &Path,
    record: &mut RunRecord,
    model: &mut Model,
    config: &RunConfig,
) -> Result<(StatsWriter, Start)> {
    let step = record.resumes.last().map_or(0, |r| r.from_step);
    if step > 0 || Checkpoints::of(dir).path(0).is_file() {
        let checkpoint = Checkpoints::of(dir).at(step)?;
        let state =
            std::fs::read(&checkpoint).with_context(|| format!("cannot read {}", checkpoint.display()))?;
        model
            .load_state(RSlice::from_slice(&state))
            .into_result()
            .map_err(|e| anyhow::anyhow!("{} is not a checkpoint of this run ({e})", checkpoint.display()))?;
    }
    let stats_path = dir.join("stats.arrows");
    // A stats file that cannot be read at all starts over; a torn one keeps its whole batches.
    let rows = reports::read_stats(&stats_path).map(|s| s.rows).unwrap_or_default();
    let total = rows.len();
    let kept: Vec<StatsRow> =
        if step == 0 { Vec::new() } else { rows.into_iter().filter(|r| r.step <= step).collect() };
    if let Some(last) = record.resumes.last_mut() {
        last.dropped_rows = total - kept.len();
    }
    run_store::write_record(dir, record)?;
    let start = Start {
        step,
        tokens: step * config.tokens_per_step(),
        wall_s: kept.last().map_or(0.0, |r| r.wall_s),
        val: kept
            .iter()
            .rev()
            .find(|r| r.split == Split::Val && r.metric.is_none())
            .and_then(|r| Some((r.loss?, r.accuracy?))),
        best_val: kept
            .iter()
            .filter(|r| r.split == Split::Val && r.metric.is_none() && r.step > 0)
            .filter_map(|r| r.loss)
            .fold(f64::INFINITY, f64::min),
    };
    Ok((StatsWriter::rewrite(&stats_path, &stats_identity(record), kept)?, start))
}

/// A stretch of steps with one data mixture and one schedule: the whole run, or a plan stage.
struct StageRun {
    /// The plan's name for it (none without a plan).
    name: Option<String>,
    first_step: u64,
    schedule: LrSchedule,
    /// Training streams and their mixing weights.
    streams: Vec<(datasets::Tokens, f64)>,
}

/// The run's stages: its plan's, each source loaded from its token cache, or one stage over
/// the run's own training stream.
fn stages(record: &RunRecord, config: &RunConfig, train: datasets::Tokens) -> Result<Vec<StageRun>> {
    let Some(p) = &record.plan else {
        return Ok(vec![StageRun {
            name: None,
            first_step: 1,
            schedule: LrSchedule::new(config),
            streams: vec![(train, 1.0)],
        }]);
    };
    p.stages
        .iter()
        .enumerate()
        .map(|(i, span)| {
            let streams = span
                .caches
                .iter()
                .zip(&p.plan.stages[i].data)
                .map(|(cache, source)| {
                    let data = PreparedData::load(cache)?;
                    if data.manifest.tokenizer_fingerprint != record.data.manifest.tokenizer_fingerprint {
                        anyhow::bail!("{} was tokenised with another tokenizer", cache.display());
                    }
                    Ok((data.train, source.weight))
                })
                .collect::<Result<Vec<_>>>()?;
            Ok(StageRun {
                name: Some(span.name.clone()),
                first_step: span.first_step,
                schedule: p.plan.schedule(i, config, span.steps)?,
                streams,
            })
        })
        .collect()
}

fn stage_of(stages: &[StageRun], step: u64) -> &StageRun {
    stages.iter().rev().find(|s| s.first_step <= step).unwrap_or(&stages[0])
}

/// The run's identity, kept in the stats file's schema metadata.
fn stats_identity(record: &RunRecord) -> String {
    serde_json::json!({
        "id": record.id,
        "arm": record.arm,
        "plugin": record.plugin.name,
        "variant": record.plugin.variant,
        "config": record.config.flat(),
        "fingerprint": record.fingerprint,
        "tokenizer": record.data.manifest.tokenizer_fingerprint,
        "val_set": record.data.manifest.val_fingerprint,
    })
    .to_string()
}

/// Issues one optimiser step (1-based `step`) over `batch_size / micro_batch_size` micro-batches
/// of the deterministic training stream, reading nothing back; its numbers come with the next
/// [`Model::take_step_stats`]. An error names the plugin call that failed.
pub fn train_step(
    model: &mut Model,
    train: &[(&datasets::Tokens, f64)],
    c: &RunConfig,
    step: u64,
    lr: f64,
) -> std::result::Result<(), (&'static str, plugin_api::PluginError)> {
    let (rows, cols) = (c.micro_batch_size, c.context_length + 1);
    let loss_scale = 1.0 / c.tokens_per_step() as f64;
    for micro in 0..c.accumulation() as u64 {
        let ids = mixed_batch(train, c.seed, step - 1, micro, rows, c.context_length);
        let batch = TokenBatch { ids: RSlice::from_slice(&ids), rows: rows as u32, cols: cols as u32 };
        model.accumulate(batch, loss_scale).map_err(|e| ("accumulate", e))?;
    }
    model.apply_step(StepSettings { step, lr }).map_err(|e| ("apply_step", e))
}

/// The steps of one logging interval: those issued but not read back yet (step, tokens after it,
/// wall seconds when issued), and the training time and tokens of the whole interval.
#[derive(Default)]
struct Interval {
    unread: Vec<(u64, u64, f64)>,
    time: Duration,
    tokens: u64,
    /// Training time not yet counted in the run's total.
    pending_time: Duration,
}

impl Interval {
    fn add(&mut self, time: Duration, tokens: u64) {
        self.time += time;
        self.pending_time += time;
        self.tokens += tokens;
    }

    /// Training tokens per second over the interval so far.
    fn rate(&self) -> f64 {
        self.tokens as f64 / self.time.as_secs_f64().max(1e-9)
    }
}

/// The mean loss and accuracy of a step's numbers.
fn mean(batch: &BatchStats) -> (f64, f64) {
    let tokens = batch.tokens.max(1) as f64;
    (batch.loss_sum / tokens, batch.correct as f64 / tokens)
}

struct Training<'a> {
    dir: &'a Path,
    config: RunConfig,
    stages: Vec<StageRun>,
    /// Resumes with overrides: the step each started after, and how its rows are marked.
    marks: Vec<(u64, String)>,
    model: Model,
    val_ids: Vec<u32>,
    /// The test split's windows, evaluated once after the last step (with `test_fraction`).
    test_ids: Option<Vec<u32>>,
    stats: Option<StatsWriter>,
    plugin_name: String,
    /// The model's training FLOPs per token, as it counts them (none from older plugins).
    flops_per_token: Option<f64>,
    started: Instant,
    /// Where this session started (non-zero when resumed).
    start: Start,
    /// The lowest validation loss after step 0 (for `keep_best`).
    best_val: f64,
    /// Time spent in training steps only (no evaluation, no checkpoints).
    train_time: Duration,
    tokens: u64,
}

impl<'a> Training<'a> {
    /// Seconds since the run first started, across resumes.
    fn wall(&self) -> f64 {
        self.start.wall_s + self.started.elapsed().as_secs_f64()
    }

    fn push(&mut self, row: StatsRow) {
        let flops = self.flops_per_token.map(|f| f * row.tokens as f64);
        if let Some(s) = self.stats.as_mut() {
            s.push(StatsRow { flops, ..row });
        }
    }

    fn flush(&mut self) -> Result<()> {
        if let Some(s) = self.stats.as_mut() {
            s.flush()?;
        }
        Ok(())
    }

    /// The stage of 1-based `step` (step 0, before training, belongs to the first).
    fn stage(&self, step: u64) -> &StageRun {
        stage_of(&self.stages, step)
    }

    /// What the stats' `stage` column says of `step`: its plan stage, and the overrides of the
    /// last resume before it, if any.
    fn stage_label(&self, step: u64) -> Option<String> {
        let mark = self.marks.iter().rev().find(|(from, _)| *from < step).map(|(_, m)| m.clone());
        match (self.stage(step).name.clone(), mark) {
            (Some(stage), Some(mark)) => Some(format!("{stage}; {mark}")),
            (stage, mark) => stage.or(mark),
        }
    }

    /// The learning rate of 1-based `step` (step 0: the first step's).
    fn lr(&self, step: u64) -> f64 {
        let stage = self.stage(step.max(1));
        stage.schedule.lr(step.max(1) - stage.first_step)
    }

    fn plugin_error(&self, call: &str, e: plugin_api::PluginError) -> Stop {
        Stop::Failed(format!("plugin {} {e} (in {call})", self.plugin_name))
    }

    fn run(&mut self, record: &mut RunRecord) -> Result<()> {
        let counts = self.model.param_counts();
        let steps = self.config.steps;
        emit(&Event::Started {
            params_train: counts.train,
            params_prod: counts.prod,
            steps,
            tokens_per_step: self.config.tokens_per_step(),
        });
        let mut result = RunResult {
            params_train: counts.train,
            params_prod: counts.prod,
            flops_per_token: self.flops_per_token,
            ..RunResult::default()
        };
        let outcome = self.train_loop(steps, &mut result);
        // Whatever happened, keep every row measured so far.
        self.flush()?;
        result.wall_s = self.wall();
        result.tokens = self.tokens;
        result.tokens_per_s =
            (self.tokens - self.start.tokens) as f64 / self.train_time.as_secs_f64().max(1e-9);
        record.result = Some(result);
        outcome
    }

    fn train_loop(&mut self, steps: u64, result: &mut RunResult) -> Result<()> {
        let (val_loss, val_acc) = match self.start.val {
            Some(val) if self.start.step > 0 => val,
            _ => self.evaluate(0)?,
        };
        result.val_loss = Some(val_loss);
        result.val_accuracy = Some(val_acc);
        result.steps = self.start.step;
        if self.config.checkpoint_every > 0 && self.start.step == 0 {
            // The initialisation itself: where `lmhost branch --at 0` starts children.
            self.checkpoint(0)?;
        }
        let mut interval = Interval::default();
        for step in self.start.step + 1..=steps {
            self.train_step(step, &mut interval)?;
            result.steps = step;
            let last = step == steps;
            let logging = step % self.config.log_every == 0 || last;
            let evaluating = step % self.config.eval_every == 0 || last;
            let checkpointing = self.config.checkpoint_every > 0 && step % self.config.checkpoint_every == 0;
            let interrupted = crate::interrupt::requested() && !last;
            if !(logging || evaluating || checkpointing || interrupted) {
                continue; // nothing is read back on this step
            }
            let loss = self.read_steps(&mut interval)?;
            let mut evaluated = None;
            if evaluating {
                let (l, a) = self.evaluate(step)?;
                result.val_loss = Some(l);
                result.val_accuracy = Some(a);
                evaluated = Some(l);
            }
            if logging {
                self.flush()?;
                let elapsed = self.started.elapsed().as_secs_f64();
                let done = step - self.start.step;
                emit(&Event::Progress {
                    step,
                    steps,
                    loss,
                    val_loss: evaluated.or(result.val_loss),
                    lr: self.lr(step),
                    stage: self.stage_label(step),
                    tokens_per_s: interval.rate(),
                    eta_s: elapsed / done as f64 * (steps - step) as f64,
                });
                interval = Interval::default();
            }
            if checkpointing && !last {
                self.flush()?;
                self.checkpoint(step)?;
            }
            if interrupted {
                self.flush()?;
                result.last_checkpoint = Some(self.checkpoint(step)?);
                return Err(Stop::Interrupted(format!(
                    "interrupted after step {step} (checkpoint written); `lmhost resume {}` continues it",
                    self.dir.display()
                ))
                .into());
            }
        }
        if let Some(ids) = self.test_ids.take() {
            let (loss, accuracy) = self.evaluate_test(steps, &ids)?;
            (result.test_loss, result.test_accuracy) = (Some(loss), Some(accuracy));
        }
        result.last_checkpoint = Some(self.checkpoint(steps)?);
        Ok(())
    }

    /// Issues one optimiser step; its numbers stay with the model until [`read_steps`](Self::read_steps).
    fn train_step(&mut self, step: u64, interval: &mut Interval) -> Result<()> {
        let t0 = Instant::now();
        let lr = self.lr(step);
        let stage = stage_of(&self.stages, step);
        let streams = stage.streams.iter().map(|(t, w)| (t, *w)).collect::<Vec<_>>();
        train_step(&mut self.model, &streams, &self.config, step, lr)
            .map_err(|(call, e)| self.plugin_error(call, e))?;
        self.tokens += self.config.tokens_per_step();
        let wall = self.wall();
        let metrics =
            self.model.extra_metrics().into_result().map_err(|e| self.plugin_error("extra_metrics", e))?;
        let name = self.stage_label(step);
        for m in metrics.iter() {
            self.push(StatsRow {
                stage: name.clone(),
                ..StatsRow::metric(step, self.tokens, wall, m.name.as_str(), m.value)
            });
        }
        interval.unread.push((step, self.tokens, wall));
        interval.add(t0.elapsed(), self.config.tokens_per_step());
        Ok(())
    }

    /// Reads back what the steps issued since the last read measured, records a stats row for
    /// each, and returns the last step's training loss; stops the run at the first step whose
    /// loss or gradient norm is not finite.
    fn read_steps(&mut self, interval: &mut Interval) -> Result<f64> {
        let t0 = Instant::now();
        let measured = self.model.take_step_stats().map_err(|e| self.plugin_error("take_step_stats", e))?;
        interval.add(t0.elapsed(), 0);
        self.train_time += interval.pending_time;
        interval.pending_time = Duration::ZERO;
        let issued = std::mem::take(&mut interval.unread);
        if measured.len() != issued.len() {
            return Err(Stop::Failed(format!(
                "plugin {} measured {} steps, but {} were issued",
                self.plugin_name,
                measured.len(),
                issued.len()
            ))
            .into());
        }
        let rate = interval.rate();
        let mut last = f64::NAN;
        for (stats, (step, tokens, wall)) in measured.iter().zip(issued) {
            let StepStats { batch, grad_norm, .. } = stats;
            let (loss, accuracy) = mean(batch);
            self.push(StatsRow {
                loss: Some(loss),
                accuracy: Some(accuracy),
                lr: Some(self.lr(step)),
                grad_norm: Some(*grad_norm),
                tokens_per_s: Some(rate),
                stage: self.stage_label(step),
                ..StatsRow::at(step, tokens, wall, Split::Train)
            });
            if !loss.is_finite() || !grad_norm.is_finite() {
                self.flush()?;
                let what = if loss.is_finite() { "gradient norm" } else { "training loss" };
                return Err(Stop::Diverged(format!(
                    "{what} became {} at step {step}; stats up to this step are kept",
                    if loss.is_nan() || grad_norm.is_nan() { "NaN" } else { "infinite" }
                ))
                .into());
            }
            last = loss;
        }
        Ok(last)
    }

    /// Loss and accuracy over the fixed validation windows.
    fn evaluate(&mut self, step: u64) -> Result<(f64, f64)> {
        let ids = std::mem::take(&mut self.val_ids);
        let measured = self.measure(&ids);
        self.val_ids = ids;
        let (loss, accuracy) = measured?;
        let row = StatsRow {
            loss: Some(loss),
            accuracy: Some(accuracy),
            lr: (step > 0).then(|| self.lr(step)), // no step has trained yet at 0
            stage: self.stage_label(step),
            ..StatsRow::at(step, self.tokens, self.wall(), Split::Val)
        };
        self.push(row);
        if !loss.is_finite() {
            self.flush()?;
            return Err(Stop::Diverged(format!(
                "validation loss became {loss} at step {step}; stats up to this step are kept"
            ))
            .into());
        }
        self.keep_if_best(step, loss)?;
        Ok((loss, accuracy))
    }

    /// Loss and accuracy over the test windows, once, after the last step.
    fn evaluate_test(&mut self, step: u64, ids: &[u32]) -> Result<(f64, f64)> {
        let (loss, accuracy) = self.measure(ids)?;
        let row = StatsRow {
            loss: Some(loss),
            accuracy: Some(accuracy),
            stage: self.stage_label(step),
            ..StatsRow::at(step, self.tokens, self.wall(), Split::Test)
        };
        self.push(row);
        Ok((loss, accuracy))
    }

    /// Mean loss and accuracy of the model on `ids`, windows of context_length + 1.
    fn measure(&mut self, ids: &[u32]) -> Result<(f64, f64)> {
        let (rows, cols) = (self.config.micro_batch_size, self.config.context_length + 1);
        let mut total = BatchStats::default();
        for chunk in ids.chunks(rows * cols) {
            let batch = TokenBatch {
                ids: RSlice::from_slice(chunk),
                rows: (chunk.len() / cols) as u32,
                cols: cols as u32,
            };
            total +=
                self.model.evaluate(batch).into_result().map_err(|e| self.plugin_error("evaluate", e))?;
        }
        Ok((total.loss_sum / total.tokens.max(1) as f64, total.correct as f64 / total.tokens.max(1) as f64))
    }

    /// The model's state (weights and optimiser) with `metadata` in its header.
    fn state(&mut self, metadata: serde_json::Value) -> Result<Vec<u8>> {
        let bytes = self
            .model
            .save_state(RStr::from_str(&metadata.to_string()))
            .into_result()
            .map_err(|e| self.plugin_error("save_state", e))?;
        Ok(bytes.into_vec())
    }

    /// Writes the checkpoint of `step` (weights, optimiser state, and where the run stood in its
    /// metadata), then prunes to `keep_checkpoints`; returns its name for `run.json`.
    fn checkpoint(&mut self, step: u64) -> Result<String> {
        let bytes = self.state(serde_json::json!({
            "lmhost.step": step.to_string(),
            "lmhost.tokens": self.tokens.to_string(),
            "lmhost.seed": self.config.seed.to_string(),
        }))?;
        let checkpoints = Checkpoints::of(self.dir);
        let name = checkpoints.write_step(step, &bytes)?;
        if self.config.keep_checkpoints > 0 {
            checkpoints.prune(self.config.keep_checkpoints as usize)?;
        }
        Ok(name)
    }

    /// With `keep_best`, saves the state as the best checkpoint when `loss` is the lowest
    /// validation loss so far.
    fn keep_if_best(&mut self, step: u64, loss: f64) -> Result<()> {
        if !self.config.keep_best || step == 0 || loss >= self.best_val {
            return Ok(());
        }
        self.best_val = loss;
        let bytes = self.state(
            serde_json::json!({ "lmhost.step": step.to_string(), "lmhost.val_loss": loss.to_string() }),
        )?;
        Checkpoints::of(self.dir).write_best(&bytes)
    }
}
