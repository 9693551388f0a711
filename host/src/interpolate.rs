//! `lmhost interpolate`: linear mode connectivity. The weights (1 − α)·A + α·B of two runs of the
//! same architecture, evaluated at evenly spaced α on a fixed evaluation set; the barrier is the
//! highest loss on the path minus the mean of the two ends' losses (Frankle et al., "Linear Mode
//! Connectivity and the Lottery Ticket Hypothesis", 2020, §2).

use std::path::{Path, PathBuf};

use abi_stable::std_types::RSlice;
use anyhow::{bail, Context, Result};
use datasets::validation_windows;
use plugin_api::{BatchStats, TokenBatch};
use safetensors::{tensor::TensorView, Dtype, SafeTensors};

use crate::restore::{last_checkpoint, Trained};

#[derive(Clone, Copy, PartialEq, clap::ValueEnum)]
pub enum SplitArg {
    Val,
    Train,
    Both,
}

#[derive(clap::Args)]
pub struct InterpolateArgs {
    /// Run A (α = 0).
    a: PathBuf,
    /// Run B (α = 1).
    b: PathBuf,
    /// Evenly spaced α from 0 to 1, both ends included.
    #[arg(long, default_value_t = 30)]
    points: usize,
    /// Which fixed windows to evaluate on: the validation split, the training stream, or both.
    #[arg(long, value_enum, default_value = "val")]
    split: SplitArg,
    /// Windows per split.
    #[arg(long, default_value_t = 32)]
    windows: usize,
    /// Where the table and plot go [default: reports/interpolate-<A>-<B>].
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn interpolate_command(args: &InterpolateArgs) -> Result<bool> {
    if args.points < 2 {
        bail!("--points {} must be at least 2 (the two ends)", args.points);
    }
    let mut run = Trained::open(&args.a)?;
    let other = crate::run_store::read_record(&args.b)?;
    let same = |what: &str, x: &dyn PartialEq<serde_json::Value>, y: &serde_json::Value| {
        if x.ne(y) {
            bail!(
                "{} and {} have different {what}: interpolating needs one architecture",
                args.a.display(),
                args.b.display()
            );
        }
        Ok(())
    };
    same(
        "plugins",
        &serde_json::json!([run.record.plugin.name, run.record.plugin.variant]),
        &serde_json::json!([other.plugin.name, other.plugin.variant]),
    )?;
    same(
        "model configs",
        &serde_json::Value::from(run.record.config.model.clone()),
        &serde_json::Value::from(other.config.model.clone()),
    )?;
    let state_a = read(&last_checkpoint(&args.a)?)?;
    let state_b = read(&last_checkpoint(&args.b)?)?;
    let b = parse(&state_b)?;

    let data = run.data()?;
    let context = run.spec.context_length as usize;
    let mut splits = Vec::new();
    if args.split != SplitArg::Train {
        splits.push(("val", validation_windows(&data.val, args.windows, context)));
    }
    if args.split != SplitArg::Val {
        splits.push(("train", validation_windows(&data.train, args.windows, context)));
    }
    let mut points = Vec::new();
    for i in 0..args.points {
        let alpha = i as f64 / (args.points - 1) as f64;
        let state = mix(&state_a, &b, alpha as f32)?;
        run.model
            .load_state(RSlice::from_slice(&state))
            .into_result()
            .map_err(|e| anyhow::anyhow!("load_state {e}"))?;
        for (name, ids) in &splits {
            let (loss, accuracy) = evaluate(&mut run, ids, context)?;
            println!("alpha:{alpha:.3} split:{name} loss:{loss:.4} acc:{accuracy:.4}");
            points.push(reports::InterpolationPoint { alpha, split: (*name).into(), loss, accuracy });
        }
    }
    let name = format!("interpolate-{}-{}", file_name(&args.a), file_name(&args.b));
    let out = args.out.clone().unwrap_or_else(|| Path::new("reports").join(name));
    std::fs::create_dir_all(&out).with_context(|| format!("cannot create {}", out.display()))?;
    let branched_at = match (&run.record.branch, &other.branch) {
        (Some(x), Some(y)) if x == y => Some(x.step),
        _ => None,
    };
    let table = reports::Interpolation {
        a: args.a.display().to_string(),
        b: args.b.display().to_string(),
        branched_at,
        points,
    };
    table.write(&out.join(reports::interpolation::FILE_NAME))?;
    let mut figure = reports::plot::Figure {
        title: "loss along (1 − α)·A + α·B".into(),
        x_label: "α".into(),
        y_label: "nats/token".into(),
        ..Default::default()
    };
    for ((split, _), color) in splits.iter().zip(["#1f77b4", "#d62728"]) {
        let barrier = table.barrier(split).context("an evaluated split has points")?.barrier;
        println!("barrier:{split} {barrier:.4} (highest loss on the path − mean of the ends)");
        figure.series.push(reports::plot::Series {
            label: (*split).into(),
            color: color.into(),
            line: table.losses(split),
            ..Default::default()
        });
    }
    let svg = figure.to_svg();
    std::fs::write(out.join("interpolation.svg"), &svg)?;
    std::fs::write(
        out.join("interpolation.png"),
        reports::png::render(&svg, 2.0).map_err(|e| anyhow::anyhow!(e))?,
    )?;
    println!("wrote {}", out.display());
    Ok(true)
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

fn parse(bytes: &[u8]) -> Result<SafeTensors<'_>> {
    SafeTensors::deserialize(bytes).map_err(|e| anyhow::anyhow!("not a checkpoint: {e}"))
}

/// A's state with every parameter replaced by (1 − α)·A + α·B (A's optimiser state kept; it is
/// not used for evaluation).
fn mix(state_a: &[u8], b: &SafeTensors, alpha: f32) -> Result<Vec<u8>> {
    let a = parse(state_a)?;
    // A's header metadata (optimiser step count and the like) goes along.
    let (_, header) =
        SafeTensors::read_metadata(state_a).map_err(|e| anyhow::anyhow!("not a checkpoint: {e}"))?;
    let metadata = header.metadata();
    let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, ta) in a.tensors() {
        let bytes = if name.starts_with("param.") {
            let tb = b
                .tensor(&name)
                .map_err(|_| anyhow::anyhow!("run B has no parameter {name}: not the same architecture"))?;
            if ta.shape() != tb.shape() || ta.dtype() != Dtype::F32 || tb.dtype() != Dtype::F32 {
                bail!(
                    "parameter {name} differs in shape or is not f32 ({:?} vs {:?})",
                    ta.shape(),
                    tb.shape()
                );
            }
            let f = |c: &[u8]| f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
            ta.data()
                .chunks_exact(4)
                .zip(tb.data().chunks_exact(4))
                .flat_map(|(x, y)| ((1.0 - alpha) * f(x) + alpha * f(y)).to_le_bytes())
                .collect()
        } else {
            ta.data().to_vec()
        };
        data.push((name, ta.dtype(), ta.shape().to_vec(), bytes));
    }
    let views: Vec<(String, TensorView)> = data
        .iter()
        .map(|(n, d, s, b)| Ok((n.clone(), TensorView::new(*d, s.clone(), b)?)))
        .collect::<Result<_>>()?;
    Ok(safetensors::tensor::serialize(views, metadata.clone())?)
}

fn evaluate(run: &mut Trained, ids: &[u32], context: usize) -> Result<(f64, f64)> {
    let cols = context + 1;
    let mut total = BatchStats::default();
    for chunk in ids.chunks(8 * cols) {
        let batch = TokenBatch {
            ids: RSlice::from_slice(chunk),
            rows: (chunk.len() / cols) as u32,
            cols: cols as u32,
        };
        total += run.model.evaluate(batch).into_result().map_err(|e| anyhow::anyhow!("evaluate {e}"))?;
    }
    Ok((total.loss_sum / total.tokens.max(1) as f64, total.correct as f64 / total.tokens.max(1) as f64))
}
