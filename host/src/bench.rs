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
    /// Instead of training, time each matrix product a training step runs (at this preset's
    /// shapes, one shard's rows) with every backend found (gemm, OpenBLAS, BLIS), one thread
    /// and two at once as the shards run them, in GFLOP/s.
    #[arg(long)]
    products: bool,
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
        "bench: {} preset:{} params:{} precision:{} batch:{}x{} threads:{} shards:{} matmul:{} steps:{} (+{} warmup)",
        plugin.description.name,
        args.preset,
        counts.train,
        spec.dtype,
        config.batch_size,
        config.context_length,
        candle_threads(),
        lmhost_kit::shards::count(),
        lmhost_kit::kernels::matmul_backend(),
        args.steps,
        args.warmup
    );
    if args.products {
        let key = |k: &str| arm.model.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0) as usize;
        let shapes = StepShapes {
            rows: config.micro_batch_size * config.context_length / lmhost_kit::shards::count(),
            width: key("n_embd"),
            heads: key("n_head").max(1),
            context: config.context_length,
            vocab: spec.vocab_size as usize,
        };
        products(&shapes);
        return Ok(true);
    }
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

/// The matrix shapes of one shard's training step.
struct StepShapes {
    rows: usize,
    width: usize,
    heads: usize,
    context: usize,
    vocab: usize,
}

/// A product as `sgemm` takes it: (m, n, k) and the operands' (row, column) strides.
struct Product {
    name: String,
    shape: (usize, usize, usize),
    lhs: (usize, usize),
    rhs: (usize, usize),
}

impl StepShapes {
    /// Every dense layer's three products (forward x·Wᵀ, dx = dy·W, dW = dyᵀ·x, in the layouts
    /// the kit passes them) and attention's per-head products, without the causal skipping.
    fn products(&self) -> Vec<Product> {
        let (r, c) = (self.rows, self.width);
        let dense = |name: &str, i: usize, o: usize| {
            [
                Product {
                    name: format!("{name} x·Wᵀ  ({r}×{i}·{i}×{o})"),
                    shape: (r, o, i),
                    lhs: (i, 1),
                    rhs: (1, i),
                },
                Product {
                    name: format!("{name} dy·W  ({r}×{o}·{o}×{i})"),
                    shape: (r, i, o),
                    lhs: (o, 1),
                    rhs: (i, 1),
                },
                Product {
                    name: format!("{name} dyᵀ·x ({o}×{r}·{r}×{i})"),
                    shape: (o, i, r),
                    lhs: (1, o),
                    rhs: (i, 1),
                },
            ]
        };
        let (t, d) = (self.context, c / self.heads);
        let mut all: Vec<Product> = [
            dense("qkv", c, 3 * c),
            dense("proj", c, c),
            dense("fc", c, 4 * c),
            dense("fc2", 4 * c, c),
            dense("head", c, self.vocab),
        ]
        .into_iter()
        .flatten()
        .collect();
        all.push(Product {
            name: format!("attn q·kᵀ  ({t}×{d}·{d}×{t})"),
            shape: (t, t, d),
            lhs: (3 * c, 1),
            rhs: (1, 3 * c),
        });
        all.push(Product {
            name: format!("attn P·v   ({t}×{t}·{t}×{d})"),
            shape: (t, d, t),
            lhs: (t, 1),
            rhs: (3 * c, 1),
        });
        all
    }
}

/// Times every product of a step with every backend found: GFLOP/s, median of 15 (one
/// thread) and the sum over two threads each running the product at once.
fn products(shapes: &StepShapes) {
    use lmhost_kit::candle::lmhost::matmul;
    let backends = matmul::found();
    for (i, backend) in backends.iter().enumerate() {
        println!("backend {i}: {}", backend.name);
    }
    print!("{:<36}", "product (GFLOP/s: 1 thread | 2 at once)");
    (0..backends.len()).for_each(|i| print!(" {:>15}", format!("backend {i}")));
    println!();
    for product in shapes.products() {
        print!("{:<36}", product.name);
        for backend in &backends {
            let one = time_product(backend, &product, 1);
            let two = time_product(backend, &product, 2);
            print!(" {:>15}", format!("{one:.0} | {two:.0}"));
        }
        println!();
    }
}

/// GFLOP/s of `threads` threads each running the product on its own operands, median of 15.
fn time_product(backend: &lmhost_kit::candle::lmhost::matmul::Backend, p: &Product, threads: usize) -> f64 {
    let (m, n, k) = p.shape;
    // Operands as large as their strides reach (attention reads q, k and v out of a wider qkv).
    let extent =
        |(rows, cols): (usize, usize), (rs, cs): (usize, usize)| (rows - 1) * rs + (cols - 1) * cs + 1;
    let (lhs_len, rhs_len) = (extent((m, k), p.lhs), extent((k, n), p.rhs));
    let run = || {
        let lhs: Vec<f32> = (0..lhs_len).map(|i| (i % 7) as f32 * 0.1).collect();
        let rhs: Vec<f32> = (0..rhs_len).map(|i| (i % 5) as f32 * 0.1).collect();
        let mut dst = vec![0f32; m * n];
        let mut seconds = Vec::new();
        for rep in 0..16 {
            let t0 = Instant::now();
            // Safety: the buffers hold every element the shapes and strides reach.
            unsafe {
                lmhost_kit::candle::lmhost::matmul::sgemm_on(
                    backend,
                    p.shape,
                    dst.as_mut_ptr(),
                    (n, 1),
                    false,
                    lhs.as_ptr(),
                    p.lhs,
                    rhs.as_ptr(),
                    p.rhs,
                    1,
                )
            };
            if rep > 0 {
                seconds.push(t0.elapsed().as_secs_f64());
            }
        }
        seconds
    };
    let mut seconds: Vec<f64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads).map(|_| s.spawn(run)).collect();
        handles.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect()
    });
    seconds.sort_by(f64::total_cmp);
    let median = seconds.get(seconds.len() / 2).copied().unwrap_or(f64::NAN);
    threads as f64 * 2.0 * (m * n * k) as f64 / median / 1e9
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
