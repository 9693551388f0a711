//! Studies: `lmhost tune` (each arm's best of a grid by validation loss, best against best on
//! the test split) and `lmhost ladder` (both arms at growing sizes, tokens ∝ parameters, a
//! scaling law each). Each is a sweep with a named folder: its runs are trained (finished twins
//! reused, wherever they are), its `study.json` names them, and its report is
//! [`reports::tune`]'s or [`reports::ladder`]'s. `--emit slurm` writes the same study as a job
//! array whose last job runs the study's command again to write the report.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use reports::{StudyKind, StudyManifest};

use crate::cli::CommonArgs;
use crate::config::{resolve_arm, Request};
use crate::plugin::{PluginDescription, PluginSource};
use crate::sweep::{expand, short_hash, SlurmOptions, Sweep};

/// The test split a study holds out unless `test_fraction=` says otherwise: whole documents,
/// after the validation ones.
pub const TEST_FRACTION: &str = "0.1";

/// Replicates per point unless `seeds=` says otherwise.
const SEEDS: &str = "3";

/// How many times `--extend` widens a grid.
const EXTEND_ROUNDS: usize = 3;

/// The default lr grid: the preset's lr times these (log-spaced, five points).
const LR_FACTORS: [f64; 5] = [0.25, 0.5, 1.0, 2.0, 4.0];

/// What every study command shares.
#[derive(clap::Args)]
pub struct StudyArgs {
    /// List the runs (and which are finished) without training anything.
    #[arg(long)]
    dry_run: bool,
    /// Write the study as a job script instead of running it here.
    #[arg(long, value_enum)]
    emit: Option<crate::sweep::Emit>,
    /// Where the job script goes [default: <study name>.sbatch].
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    slurm: SlurmOptions,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(clap::Args)]
pub struct TuneArgs {
    /// `baseline`, a plugin library (plugins/NAME.so), a plugin crate folder, or a plugin name.
    plugin: String,
    /// KEY=v1,v2,… the grid of one key, host or model (default: lr at the preset's lr × 1/4,
    /// 1/2, 1, 2, 4); seeds=N replicates per point (default 3); any other key=value is fixed.
    /// test_fraction defaults to 0.1.
    overrides: Vec<String>,
    /// While an arm's best is at an edge of its grid, add the next value beyond that edge (the
    /// grid's own spacing; at most three times).
    #[arg(long)]
    extend: bool,
    #[command(flatten)]
    study: StudyArgs,
}

#[derive(clap::Args)]
pub struct LadderArgs {
    /// `baseline`, a plugin library (plugins/NAME.so), a plugin crate folder, or a plugin name.
    plugin: String,
    /// sizes=D1,D2,… depths (default: ¼, ½, ¾ and all of the preset's), width_per_layer=W
    /// (default: the preset's width ÷ depth), head_dim=H (default: the preset's),
    /// tokens_per_param=T (default 20, Chinchilla's), lr_rule=constant|inverse_width,
    /// seeds=N (default 2); any other key=value is fixed. Warmup defaults to a tenth of each
    /// size's steps, test_fraction to 0.1.
    overrides: Vec<String>,
    #[command(flatten)]
    study: StudyArgs,
}

/// The command line as typed (for the manifest and the report: run again, it finishes the study).
fn typed_command() -> String {
    let words: Vec<String> = std::env::args().skip(1).map(|a| crate::sweep::quote(&a)).collect();
    format!("lmhost {}", words.join(" "))
}

/// The key of `word` (`lr` of `lr=1e-3`).
fn key_of(word: &str) -> &str {
    word.split_once('=').map_or(word, |(k, _)| k)
}

/// The value of the last `key=` among `words`.
fn value_of<'a>(words: &'a [String], key: &str) -> Option<&'a str> {
    words.iter().rev().find(|w| key_of(w) == key).map(|w| &w[key.len() + 1..])
}

/// `words` with `key=default` added unless some word sets `key`.
fn with_default(mut words: Vec<String>, key: &str, default: &str) -> Vec<String> {
    if value_of(&words, key).is_none() {
        words.push(format!("{key}={default}"));
    }
    words
}

/// A number as a grid value: six significant digits, in the shortest form (`2.5e-4`, `0.5`, `40`).
fn grid_value(v: f64, integer: bool) -> String {
    if integer {
        return format!("{}", v.round() as i64);
    }
    let rounded: f64 = format!("{v:.5e}").parse().unwrap_or(v);
    let plain = format!("{rounded}");
    let sci = format!("{rounded:e}");
    if plain.len() <= sci.len() {
        plain
    } else {
        sci
    }
}

impl StudyArgs {
    fn sweep(&self, source: PluginSource, points: Vec<Vec<String>>, folder: String) -> Sweep {
        Sweep {
            source,
            preset: self.common.preset.clone(),
            device: self.common.device.clone(),
            points,
            runs_root: self.common.runs_dir.clone(),
            cache_dir: self.common.cache_dir(),
            no_baseline: false,
            retrain_baseline: self.common.retrain_baseline,
            folder: Some(folder),
        }
    }

    /// The baseline's config for these words, resolved as its arm would be.
    fn baseline_config(&self, words: &[String]) -> Result<crate::config::ArmConfig> {
        let request = Request { variant: None, ..self.common.request(words)? };
        Ok(resolve_arm(&PluginDescription::builtin(), &request)?.0)
    }

    /// The lmhost arguments that run this study again here (the last job of a Slurm array).
    fn again(&self, command: &str, plugin: &str, words: &[String]) -> Vec<String> {
        let mut args = vec![command.to_owned(), plugin.to_owned()];
        args.extend(words.iter().cloned());
        args.extend(["--preset".to_owned(), self.common.preset.clone()]);
        if let Some(d) = &self.common.device {
            args.extend(["--device".to_owned(), d.clone()]);
        }
        args
    }

    /// Writes the job script; `again` is the study's command for its last job.
    fn emit(&self, sweep: &Sweep, again: &[String]) -> Result<bool> {
        sweep.write_slurm(self.out.as_deref(), &self.slurm, Some(again))
    }
}

/// Writes `study.json` into the study's folder and the study's report beside the runs; returns
/// the report's folder.
fn finish(sweep: &Sweep, kind: StudyKind, dirs: &[PathBuf]) -> Result<PathBuf> {
    let folder = sweep.runs_dir();
    std::fs::create_dir_all(&folder).with_context(|| format!("cannot create {}", folder.display()))?;
    let manifest = StudyManifest {
        name: sweep.name(),
        kind,
        command: typed_command(),
        runs: dirs.iter().map(|d| std::path::absolute(d).unwrap_or(d.clone())).collect(),
    };
    manifest.write(&folder)?;
    let out = crate::report_cmd::fresh_dir(&crate::orchestrate::reports_dir(&sweep.runs_root), &sweep.name());
    let files = reports::write_study_report(&folder, &out, &crate::config::observing_keys())
        .with_context(|| format!("cannot write the report of {}", folder.display()))?;
    println!("study: {}", folder.display());
    println!("report: {}", files.html.display());
    Ok(out)
}

/// The runs of `dirs` that logged anything.
fn load_runs(dirs: &[PathBuf]) -> Vec<reports::Run> {
    dirs.iter().filter_map(|d| reports::Run::load(d).ok()).collect()
}

/// A tune's grid: the key, its values in the order given, and everything else.
struct Grid {
    key: String,
    values: Vec<String>,
    /// The fixed words and the seeds.
    rest: Vec<String>,
}

impl Grid {
    fn parse(words: &[String], args: &StudyArgs) -> Result<Self> {
        let lists: Vec<&String> = words.iter().filter(|w| key_of(w) != "seeds" && w.contains(',')).collect();
        let mut rest: Vec<String> = words.iter().filter(|w| !w.contains(',')).cloned().collect();
        rest = with_default(rest, "test_fraction", TEST_FRACTION);
        if value_of(&rest, "seed").is_none() {
            rest = with_default(rest, "seeds", SEEDS);
        }
        let (key, values) = match lists.as_slice() {
            [] => {
                let lr = args.baseline_config(&rest)?.run_config()?.lr;
                rest.retain(|w| key_of(w) != "lr");
                ("lr".to_owned(), LR_FACTORS.iter().map(|f| grid_value(lr * f, false)).collect())
            }
            [one] => {
                let (key, list) = one.split_once('=').with_context(|| format!("`{one}` is not key=value"))?;
                (key.to_owned(), list.split(',').map(|v| v.trim().to_owned()).collect())
            }
            many => bail!(
                "a tune tunes one key, and {} are lists: tune one (lr=…), fix the others, or use `lmhost sweep` for a grid of several",
                many.iter().map(|w| key_of(w)).collect::<Vec<_>>().join(", ")
            ),
        };
        if key == "seed" {
            bail!("seed is not tuned: seeds=N sets the replicates of every point");
        }
        Ok(Self { key, values, rest })
    }

    /// The sweep's points: every value × every seed.
    fn points(&self, values: &[String]) -> Result<Vec<Vec<String>>> {
        let mut words = self.rest.clone();
        words.push(format!("{}={}", self.key, values.join(",")));
        expand(&words, false)
    }
}

/// The values beyond the edges where some arm's best sits, in the grid's own spacing
/// (geometric for a positive grid, else arithmetic).
fn widen(tune: &reports::tune::Tune, values: &[String]) -> Vec<String> {
    let Ok(mut numbers) = values.iter().map(|v| v.parse::<f64>()).collect::<Result<Vec<f64>, _>>() else {
        return Vec::new();
    };
    numbers.sort_by(f64::total_cmp);
    let integer = values.iter().all(|v| v.parse::<i64>().is_ok());
    let positive = numbers.iter().all(|v| *v > 0.0);
    let n = numbers.len();
    let step = |a: f64, b: f64| -> f64 {
        // One more step from b, away from a.
        match (positive, a == b) {
            (true, true) => b * 2.0,
            (true, false) => b * b / a,
            (false, true) => b + 1.0,
            (false, false) => b + (b - a),
        }
    };
    let mut out = Vec::new();
    for arm in &tune.arms {
        let next = match arm.edge() {
            Some(reports::tune::Edge::Lowest) => step(numbers[1.min(n - 1)], numbers[0]),
            Some(reports::tune::Edge::Highest) => step(numbers[n.saturating_sub(2)], numbers[n - 1]),
            None => continue,
        };
        let v = grid_value(next, integer);
        if !values.contains(&v) && !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// `lmhost tune`.
pub fn tune(args: &TuneArgs) -> Result<bool> {
    let source = crate::workspace::resolve_plugin_arg(&args.plugin)?;
    let grid = Grid::parse(&args.overrides, &args.study)?;
    let probe = args.study.sweep(source.clone(), Vec::new(), String::new());
    let what = serde_json::json!([
        probe.label(),
        args.study.common.preset,
        args.study.common.device,
        args.overrides
    ]);
    let name = format!("tune-{}-{}-{}", probe.label(), grid.key, short_hash(&what));
    let mut values = grid.values.clone();
    let sweep = args.study.sweep(source, grid.points(&values)?, name);
    if args.study.emit.is_some() {
        return args.study.emit(&sweep, &args.study.again("tune", &args.plugin, &args.overrides));
    }
    let mut round = 0;
    loop {
        let Some(trained) = sweep.train(&grid.points(&values)?, args.study.dry_run)? else {
            return Ok(false);
        };
        if args.study.dry_run {
            return Ok(true);
        }
        let runs = load_runs(&trained.dirs);
        let tune = reports::tune::Tune::new(runs, &grid.key, &crate::config::observing_keys())
            .context("cannot analyse the tune")?;
        let wider = widen(&tune, &values);
        if args.extend && !wider.is_empty() && round < EXTEND_ROUNDS {
            round += 1;
            println!(
                "tune: a best is at an edge of the grid; widening it with {}={}",
                grid.key,
                wider.join(",")
            );
            values.extend(wider);
            continue;
        }
        println!();
        for arm in &tune.arms {
            println!("tune: {}", reports::tune::describe_pick(arm, &grid.key));
        }
        for note in tune.edge_notes() {
            eprintln!("note: {note}");
        }
        crate::report_cmd::print_summary(&tune.best);
        finish(&sweep, StudyKind::Tune { key: grid.key.clone() }, &trained.dirs)?;
        return Ok(trained.all_ok);
    }
}

/// The words a ladder reads itself; every other word is a fixed override of every run.
const LADDER_KEYS: [&str; 5] = ["sizes", "width_per_layer", "head_dim", "tokens_per_param", "lr_rule"];

/// How each size's learning rate follows from the base lr.
#[derive(Debug, Clone, Copy, PartialEq)]
enum LrRule {
    /// The same lr at every size.
    Constant,
    /// lr × preset width / width (the hidden layers' rule of μP for Adam, applied to all).
    InverseWidth,
}

impl LrRule {
    fn parse(s: &str) -> Result<Self> {
        match s {
            "constant" => Ok(Self::Constant),
            "inverse_width" => Ok(Self::InverseWidth),
            _ => bail!("lr_rule={s}: use constant (the same lr at every size) or inverse_width (lr × preset width / width)"),
        }
    }

    fn describe(self, lr: f64, width: u64) -> String {
        match self {
            Self::Constant => format!("constant (lr {lr:e} at every size)"),
            Self::InverseWidth => format!("inverse_width (lr {lr:e} × {width} / width)"),
        }
    }
}

/// `lmhost ladder`.
pub fn ladder(args: &LadderArgs) -> Result<bool> {
    let source = crate::workspace::resolve_plugin_arg(&args.plugin)?;
    let words = &args.overrides;
    for key in ["steps", "n_layer", "n_embd", "n_head"] {
        if value_of(words, key).is_some() {
            bail!("{key}= is the ladder's to set: give sizes=… (depths), width_per_layer=… and head_dim=… instead");
        }
    }
    let mut fixed: Vec<String> =
        words.iter().filter(|w| !LADDER_KEYS.contains(&key_of(w))).cloned().collect();
    fixed = with_default(fixed, "test_fraction", TEST_FRACTION);
    let seeds = value_of(&fixed, "seeds").unwrap_or("2").to_owned();
    fixed.retain(|w| key_of(w) != "seeds");
    let base = args.study.baseline_config(&fixed)?;
    let model_int = |key: &str| -> Result<u64> {
        base.model
            .get(key)
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("the baseline has no {key}"))
    };
    let (depth, width, heads) = (model_int("n_layer")?, model_int("n_embd")?, model_int("n_head")?);
    let number = |key: &str, default: f64| -> Result<f64> {
        value_of(words, key).map_or(Ok(default), |v| {
            v.parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0)
                .with_context(|| format!("{key}={v}: expected a positive number"))
        })
    };
    let width_per_layer = number("width_per_layer", (width / depth) as f64)? as u64;
    let head_dim = number("head_dim", (width / heads) as f64)? as u64;
    if width_per_layer == 0 || head_dim == 0 {
        bail!("width_per_layer and head_dim must be whole numbers of at least 1");
    }
    let tokens_per_param = number("tokens_per_param", 20.0)?;
    let lr_rule = LrRule::parse(value_of(words, "lr_rule").unwrap_or("constant"))?;
    let depths: Vec<u64> = match value_of(words, "sizes") {
        Some(list) => list
            .split(',')
            .map(|d| d.trim().parse::<u64>().ok().filter(|d| *d > 0))
            .collect::<Option<Vec<_>>>()
            .with_context(|| format!("sizes={list}: expected depths, e.g. sizes=1,2,3,4"))?,
        None => {
            let mut d: Vec<u64> =
                [0.25, 0.5, 0.75, 1.0].iter().map(|f| ((depth as f64 * f).round() as u64).max(1)).collect();
            d.dedup();
            d
        }
    };
    let mut distinct = depths.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if distinct.len() < 3 {
        bail!("a ladder needs at least three sizes to fit a law (four or more to test one): sizes=1,2,3,4");
    }
    if distinct.len() < 4 {
        eprintln!(
            "note: {} sizes fit a three-parameter law exactly; four or more leave a residual to judge it by",
            distinct.len()
        );
    }
    let run = base.run_config()?;
    let mut sizes = Vec::new();
    let mut points = Vec::new();
    for d in distinct {
        let n_embd = d * width_per_layer;
        if !n_embd.is_multiple_of(head_dim) {
            bail!("depth {d} gives width {n_embd}, not a multiple of head_dim={head_dim}: pick width_per_layer or head_dim to divide");
        }
        let shape =
            [format!("n_layer={d}"), format!("n_embd={n_embd}"), format!("n_head={}", n_embd / head_dim)];
        let at_size: Vec<String> = fixed.iter().cloned().chain(shape.iter().cloned()).collect();
        let params: u64 =
            crate::model::parameters(&PluginSource::Builtin, &args.study.baseline_config(&at_size)?)?
                .iter()
                .map(|p| p.shape.iter().product::<usize>() as u64)
                .sum();
        let steps = ((tokens_per_param * params as f64 / run.tokens_per_step() as f64).round() as u64).max(1);
        let lr = match lr_rule {
            LrRule::Constant => run.lr,
            LrRule::InverseWidth => run.lr * width as f64 / n_embd as f64,
        };
        let mut point: Vec<String> = at_size.iter().filter(|w| key_of(w) != "lr").cloned().collect();
        point.extend([format!("steps={steps}"), format!("lr={}", grid_value(lr, false))]);
        point = with_default(point, "warmup", &steps.div_ceil(10).to_string());
        point.push(format!("seeds={seeds}"));
        points.extend(expand(&point, false)?);
        sizes.push(reports::study::LadderSize {
            n_layer: d,
            n_embd,
            n_head: n_embd / head_dim,
            params,
            steps,
            lr,
        });
    }
    let probe = args.study.sweep(source.clone(), Vec::new(), String::new());
    let what = serde_json::json!([probe.label(), args.study.common.preset, args.study.common.device, words]);
    let name = format!("ladder-{}-{}", probe.label(), short_hash(&what));
    let sweep = args.study.sweep(source, points, name);
    for s in &sizes {
        println!(
            "ladder: size {} ({} heads): {} baseline parameters, {} steps, lr {:e}",
            s.name(),
            s.n_head,
            s.params,
            s.steps,
            s.lr
        );
    }
    if args.study.emit.is_some() {
        return args.study.emit(&sweep, &args.study.again("ladder", &args.plugin, words));
    }
    let Some(trained) = sweep.train(&sweep.points, args.study.dry_run)? else { return Ok(false) };
    if args.study.dry_run {
        return Ok(true);
    }
    let kind = StudyKind::Ladder { sizes, tokens_per_param, lr_rule: lr_rule.describe(run.lr, width) };
    let out = finish(&sweep, kind, &trained.dirs)?;
    print_ladder(&out.join("report.json"));
    Ok(trained.all_ok)
}

/// The ladder's fits and multipliers, from its report's numbers.
fn print_ladder(numbers: &Path) {
    let Ok(v) = std::fs::read_to_string(numbers)
        .map(|t| serde_json::from_str::<serde_json::Value>(&t).unwrap_or_default())
    else {
        return;
    };
    for arm in v["arms"].as_array().into_iter().flatten() {
        let law = &arm["fit"]["law"];
        match law["alpha"].as_f64() {
            Some(alpha) => println!(
                "ladder: {} L(C) = {:.3} + {:.3e}·C^−{alpha:.3}",
                arm["label"].as_str().unwrap_or("?"),
                law["e"].as_f64().unwrap_or(f64::NAN),
                law["a"].as_f64().unwrap_or(f64::NAN)
            ),
            None => println!("ladder: {} no fit", arm["label"].as_str().unwrap_or("?")),
        }
    }
    for m in v["multipliers"].as_array().into_iter().flatten() {
        let x = |v: &serde_json::Value| v.as_f64().map_or("∞".to_owned(), |m| format!("{m:.2}×"));
        println!(
            "ladder: compute multiplier {} at {:.3e} FLOPs ({}) [{}, {}]",
            x(&m["multiplier"]),
            m["flops"].as_f64().unwrap_or(f64::NAN),
            m["size"].as_str().map_or("extrapolated".to_owned(), |s| format!("size {s}")),
            x(&m["ci95"][0]),
            x(&m["ci95"][1])
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grid_values_are_short_and_keep_their_kind() {
        assert_eq!(grid_value(1e-3 * 0.25, false), "2.5e-4");
        assert_eq!(grid_value(0.001 * 0.001 / 0.002, false), "5e-4");
        assert_eq!(grid_value(0.016, false), "0.016");
        assert_eq!(grid_value(3.2e-7, false), "3.2e-7");
        assert_eq!(grid_value(80.4, true), "80");
        assert_eq!(with_default(vec!["lr=1".into()], "lr", "2"), ["lr=1"]);
        assert_eq!(value_of(&["a=1".into(), "a=2".into()], "a"), Some("2"));
    }
}
