//! `lmhost bench`: training throughput of the baseline (or a plugin) on the real data, with
//! the same step the driver runs, reported as tokens/s per step (median, min, max) and peak RSS.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::config::{resolve_arm, Override, Request};
use crate::model::Model;
use crate::plugin::Plugin;
use crate::train::train_step;

#[derive(clap::Args)]
pub struct BenchArgs {
    /// `baseline` or a plugin library.
    #[arg(default_value = "baseline")]
    plugin: String,
    /// key=value overrides, as for `run`.
    overrides: Vec<String>,
    /// Timed optimiser steps.
    #[arg(long, default_value_t = 20)]
    steps: u64,
    /// Untimed steps first (allocations, thread pools).
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// A preset: tiny (the reference model), small, llama-tiny, llama-small, gpt2ish or gpt2.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Where tokenizers and token caches go.
    #[arg(long, env = "LMHOST_CACHE")]
    cache_dir: Option<PathBuf>,
    /// Also time a step's parts: the forward pass alone (as evaluation runs it), forward and
    /// backward, and the optimiser step (clipping included).
    #[arg(long)]
    phases: bool,
    /// The device's dense peak in TFLOP/s for the precision trained, to print the model FLOPs
    /// utilisation (H100/H200: 989 bf16, 495 tf32, 67 f32).
    #[arg(long)]
    peak_tflops: Option<f64>,
}

pub fn bench(args: &BenchArgs) -> Result<bool> {
    // `lmhost bench precision=bf16-mixed`: the baseline, with the key.
    let (plugin, overrides) = match args.plugin.contains('=') {
        true => ("baseline", std::iter::once(&args.plugin).chain(&args.overrides).collect::<Vec<_>>()),
        false => (args.plugin.as_str(), args.overrides.iter().collect()),
    };
    let source = crate::workspace::resolve_plugin_arg(plugin)?;
    let plugin = Plugin::open(&source)?;
    let request = Request {
        preset: args.preset.clone(),
        variant: None,
        overrides: overrides.iter().map(|o| o.parse()).collect::<Result<Vec<Override>>>()?,
    };
    let (mut arm, unknown) = resolve_arm(&plugin.description, &request)?;
    if let Some(key) = unknown.first() {
        anyhow::bail!("unknown config key `{key}`");
    }
    arm.model = plugin.resolve_model_config(&arm.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let config = arm.run_config()?;
    let cache = args.cache_dir.clone().unwrap_or_else(crate::cli::default_cache_dir);
    let data =
        crate::events::prepare_data(&config.data_settings(), &cache).context("cannot prepare the data")?;
    let spec = config.run_spec(data.manifest.vocab_size);
    let model = plugin.create(&spec, &arm.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut model = Model::new(model, &plugin.description.api_version);
    let counts = model.param_counts();
    println!(
        "bench: {} preset:{} params:{} precision:{} batch:{}x{} threads:{} shards:{} steps:{} (+{} warmup)",
        plugin.description.name,
        args.preset,
        counts.train,
        spec.dtype,
        config.batch_size,
        config.context_length,
        candle_threads(),
        lmhost_kit::shards::count(),
        args.steps,
        args.warmup
    );
    let fail = |call: &str, e: plugin_api::PluginError| anyhow::anyhow!("{call}: {e}");
    let mut rates = Vec::new();
    for step in 1..=args.warmup + args.steps {
        let t0 = Instant::now();
        train_step(&mut model, &[(&data.train, 1.0)], &config, step, config.lr)
            .map_err(|(call, e)| fail(call, e))?;
        // Read back at every step here, so that the time is the step's whole time on any device.
        let stats = model.take_step_stats().map_err(|e| fail("take_step_stats", e))?;
        let tokens: u64 = stats.iter().map(|s| s.batch.tokens).sum();
        let rate = tokens as f64 / t0.elapsed().as_secs_f64();
        if step > args.warmup {
            rates.push(rate);
        }
    }
    if args.phases {
        phases(&mut model, &data, &config, args)?;
    }
    rates.sort_by(f64::total_cmp);
    let median = rates[rates.len() / 2];
    let mean = rates.iter().sum::<f64>() / rates.len() as f64;
    println!(
        "tokens/s: median {median:.0}  mean {mean:.0}  min {:.0}  max {:.0}  peak_rss_mb: {}",
        rates[0],
        rates[rates.len() - 1],
        peak_rss_mb().map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into())
    );
    if let Some(peak) = args.peak_tflops {
        // nanoGPT's estimate_mfu (PaLM, appendix B): 6N + 12·L·C·T per token.
        let key = |k: &str| arm.model.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0) as f64;
        let flops =
            6.0 * counts.train as f64 + 12.0 * key("n_layer") * key("n_embd") * config.context_length as f64;
        println!(
            "mfu: {:.1}% ({:.3} GFLOP/token, peak {peak} TFLOP/s)",
            100.0 * median * flops / (peak * 1e12),
            flops / 1e9
        );
    }
    Ok(true)
}

fn candle_threads() -> usize {
    lmhost_kit::candle::utils::get_num_threads()
}

/// Peak resident memory of this process (Linux: VmHWM).
pub fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Median milliseconds per step of the forward pass alone, forward and backward, and the
/// optimiser step, over the timed steps (on batches after the ones timed above); then what a
/// step issues: the plugin's tensor ops and reads back to the host.
fn phases(
    model: &mut Model,
    data: &datasets::PreparedData,
    config: &crate::config::RunConfig,
    args: &BenchArgs,
) -> Result<()> {
    use abi_stable::std_types::RSlice;
    let (rows, cols) = (config.micro_batch_size, config.context_length + 1);
    let scale = 1.0 / config.tokens_per_step() as f64;
    let fail = |call: &str, e: plugin_api::PluginError| anyhow::anyhow!("{call}: {e}");
    let mut times = [Vec::new(), Vec::new(), Vec::new()];
    let mut counts = Vec::new();
    let first = args.warmup + args.steps + 1;
    for step in first..first + args.steps {
        let (mut forward, mut backward) = (0.0, 0.0);
        for micro in 0..config.accumulation() as u64 {
            let ids = datasets::mixed_batch(
                &[(&data.train, 1.0)],
                config.seed,
                step,
                micro,
                rows,
                config.context_length,
            );
            let batch = || plugin_api::TokenBatch {
                ids: RSlice::from_slice(&ids),
                rows: rows as u32,
                cols: cols as u32,
            };
            let t0 = Instant::now();
            model.evaluate(batch()).into_result().map_err(|e| fail("evaluate", e))?;
            forward += t0.elapsed().as_secs_f64();
            let before = model.counters();
            let t0 = Instant::now();
            model.accumulate(batch(), scale).map_err(|e| fail("accumulate", e))?;
            let after = model.counters();
            backward += t0.elapsed().as_secs_f64();
            counts.push(("forward+backward", after.ops - before.ops, after.host_reads - before.host_reads));
        }
        let before = model.counters();
        let t0 = Instant::now();
        model
            .apply_step(plugin_api::StepSettings { step, lr: config.lr })
            .map_err(|e| fail("apply_step", e))?;
        let after = model.counters();
        counts.push(("optimizer", after.ops - before.ops, after.host_reads - before.host_reads));
        model.take_step_stats().map_err(|e| fail("take_step_stats", e))?;
        let optimizer = t0.elapsed().as_secs_f64();
        let read = model.counters();
        counts.push(("read", read.ops - after.ops, read.host_reads - after.host_reads));
        for (list, t) in times.iter_mut().zip([forward, backward, optimizer]) {
            list.push(t * 1e3);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let [f, fb, opt] = &mut times;
    let (f, fb, opt) = (median(f), median(fb), median(opt));
    println!(
        "phases (median ms per step): forward {f:.1}  forward+backward {fb:.1} (backward ≈ {:.1})  optimizer {opt:.1}",
        fb - f
    );
    let per_step = |phase: &str| {
        let of: Vec<(u64, u64)> = counts.iter().filter(|c| c.0 == phase).map(|c| (c.1, c.2)).collect();
        let steps = args.steps.max(1);
        (of.iter().map(|c| c.0).sum::<u64>() / steps, of.iter().map(|c| c.1).sum::<u64>() / steps)
    };
    let ((fb_ops, fb_reads), (opt_ops, opt_reads)) = (per_step("forward+backward"), per_step("optimizer"));
    let (_, interval_reads) = per_step("read");
    if fb_ops + opt_ops == 0 {
        println!("counters: the plugin was built before plugin-api 0.1.2 and does not count");
    } else {
        println!(
            "counters per step: tensor ops {} (forward+backward {fb_ops}, optimizer {opt_ops}); reads back to the host {} (forward+backward {fb_reads}, optimizer {opt_reads}), and {interval_reads} per logging interval",
            fb_ops + opt_ops,
            fb_reads + opt_reads,
        );
    }
    Ok(())
}
