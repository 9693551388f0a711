//! `lmhost bench`: training throughput of the baseline (or a plugin) on the real data, with
//! the same step the driver runs, reported as tokens/s per step (median, min, max) and peak RSS.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::config::{resolve_arm, Override, Request};
use crate::plugin::Plugin;
use crate::train::optimizer_step;

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
    /// tiny (the reference model), small or gpt2ish.
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Where tokenizers and token caches go.
    #[arg(long, env = "LMHOST_CACHE")]
    cache_dir: Option<PathBuf>,
}

pub fn bench(args: &BenchArgs) -> Result<bool> {
    let source = crate::workspace::resolve_plugin_arg(&args.plugin)?;
    let plugin = Plugin::open(&source)?;
    let request = Request {
        preset: args.preset.clone(),
        variant: None,
        overrides: args.overrides.iter().map(|o| o.parse()).collect::<Result<Vec<Override>>>()?,
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
    let mut model = plugin.create(&spec, &arm.model).map_err(|e| anyhow::anyhow!("{e}"))?;
    let counts = model.param_counts();
    println!(
        "bench: {} preset:{} params:{} batch:{}x{} threads:{} steps:{} (+{} warmup)",
        plugin.description.name,
        args.preset,
        counts.train,
        config.batch_size,
        config.context_length,
        candle_threads(),
        args.steps,
        args.warmup
    );
    let mut rates = Vec::new();
    for step in 1..=args.warmup + args.steps {
        let t0 = Instant::now();
        let (stats, _) = optimizer_step(&mut model, &[(&data.train, 1.0)], &config, step, config.lr)
            .map_err(|(call, e)| anyhow::anyhow!("{call}: {e}"))?;
        let rate = stats.tokens as f64 / t0.elapsed().as_secs_f64();
        if step > args.warmup {
            rates.push(rate);
        }
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
