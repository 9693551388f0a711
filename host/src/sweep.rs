//! Sweeps: `lr=3e-4,6e-4 seed=1,2,3` (Hydra's comma grammar) expands into a grid of runs, or
//! with `--zip` into one run per position; `seeds=3` stands for `seed=1,2,3`. A sweep's runs live
//! in one folder named after what was asked, so starting the same sweep again finds the runs it
//! finished and skips them; it ends in one comparison report. `--emit slurm` writes the same
//! sweep as a Slurm job array instead.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use crate::config::{resolve_arm, Request};
use crate::orchestrate;
use crate::plugin::{PluginDescription, PluginSource};
use crate::run_plan::RunPlan;

/// One swept key and its values, in the order given.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    key: String,
    values: Vec<String>,
}

/// The runs of a sweep: each a list of `key=value` overrides (the fixed ones first).
pub fn expand(overrides: &[String], zip: bool) -> Result<Vec<Vec<String>>> {
    let mut fixed = Vec::new();
    let mut axes: Vec<Axis> = Vec::new();
    let mut replicates = None;
    for raw in overrides {
        let (key, value) =
            raw.split_once('=').with_context(|| format!("`{raw}` is not key=value (e.g. lr=6e-4)"))?;
        if key == "seeds" {
            let n: u64 = value.parse().ok().filter(|&n| n > 0).with_context(|| {
                format!("seeds={value}: expected a positive count of replicates (seeds=3 runs seed=1,2,3)")
            })?;
            replicates = Some(n);
        } else if value.contains(',') {
            let values: Vec<String> = value.split(',').map(|v| v.trim().to_owned()).collect();
            if values.iter().any(String::is_empty) {
                bail!("{raw}: an empty value in the list");
            }
            if axes.iter().any(|a| a.key == key) {
                bail!("{key} is swept twice");
            }
            axes.push(Axis { key: key.to_owned(), values });
        } else {
            fixed.push(raw.clone());
        }
    }
    if let Some(n) = replicates {
        if axes.iter().any(|a| a.key == "seed") {
            bail!("seeds={n} and a list of seeds: give one or the other");
        }
        // Replicates start at the given seed (1 by default).
        let first = match fixed.iter().position(|o| o.starts_with("seed=")) {
            Some(i) => fixed.remove(i)["seed=".len()..]
                .parse::<u64>()
                .with_context(|| "seed: expected a non-negative integer")?,
            None => 1,
        };
        axes.push(Axis { key: "seed".into(), values: (first..first + n).map(|s| s.to_string()).collect() });
    }
    let points: Vec<Vec<(String, String)>> = if zip {
        let n = axes.first().map_or(1, |a| a.values.len());
        if let Some(a) = axes.iter().find(|a| a.values.len() != n) {
            bail!(
                "--zip needs lists of one length: {} has {} values, {} has {n}",
                a.key,
                a.values.len(),
                axes[0].key
            );
        }
        (0..n).map(|i| axes.iter().map(|a| (a.key.clone(), a.values[i].clone())).collect()).collect()
    } else {
        // The first key varies slowest, as Hydra's multirun orders them.
        axes.iter().fold(vec![Vec::new()], |points, axis| {
            points
                .iter()
                .flat_map(|p| {
                    axis.values.iter().map(move |v| {
                        let mut p = p.clone();
                        p.push((axis.key.clone(), v.clone()));
                        p
                    })
                })
                .collect()
        })
    };
    Ok(points
        .into_iter()
        .map(|p| fixed.iter().cloned().chain(p.into_iter().map(|(k, v)| format!("{k}={v}"))).collect())
        .collect())
}

/// Whether these overrides ask for more than one run.
pub fn is_sweep(overrides: &[String]) -> bool {
    overrides.iter().any(|o| o.split_once('=').is_some_and(|(k, v)| k == "seeds" || v.contains(',')))
}

/// What a sweep runs: the plugin, the flags shared by every run, and the runs' overrides.
pub struct Sweep {
    pub source: PluginSource,
    pub preset: String,
    pub device: Option<String>,
    pub points: Vec<Vec<String>>,
    pub runs_root: PathBuf,
    pub cache_dir: PathBuf,
    pub no_baseline: bool,
    /// Train each distinct baseline again (once per invocation: a point that shares one with
    /// an earlier point reuses the run just trained).
    pub retrain_baseline: bool,
    /// The folder's name when a study names it (`tune-…`, `ladder-…`) [default: `sweep-…`].
    pub folder: Option<String>,
}

impl Sweep {
    /// `sweep-<plugin>-<hash of what was asked>`: the same sweep always gets the same folder.
    pub fn name(&self) -> String {
        if let Some(folder) = &self.folder {
            return folder.clone();
        }
        let what = serde_json::json!([self.label(), self.preset, self.device, self.points, self.no_baseline]);
        format!("sweep-{}-{}", self.label(), short_hash(&what))
    }

    /// The experiment's name (`baseline` when the baseline is swept alone).
    pub fn label(&self) -> String {
        match &self.source {
            PluginSource::Builtin => "baseline".to_owned(),
            PluginSource::Library { path } => plugin_name(path),
        }
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.runs_root.join(self.name())
    }

    fn request(&self, point: &[String]) -> Result<Request> {
        Request::new(&self.preset, self.device.as_deref(), point)
    }

    fn plan(&self, point: &[String], dry_run: bool) -> Result<RunPlan> {
        Ok(RunPlan {
            source: self.source.clone(),
            request: self.request(point)?,
            runs_dir: self.runs_dir(),
            runs_root: self.runs_root.clone(),
            cache_dir: self.cache_dir.clone(),
            retrain_baseline: self.retrain_baseline,
            no_baseline: self.no_baseline,
            reuse_finished: true,
            // Started again after a Ctrl-C or a time limit, a sweep (a tune, a ladder) carries on
            // from its interrupted run's last checkpoint instead of training it anew.
            resume_interrupted: true,
            dry_run,
            sweep: true,
            report: false,
        })
    }

    /// Trains every run in turn (finished ones are skipped, interrupted ones resumed), then
    /// writes one report over all and prints its comparison. A dry run lists the runs and
    /// whether each is finished.
    pub fn run(&self, dry_run: bool) -> Result<bool> {
        let Some(trained) = self.train(&self.points, dry_run)? else { return Ok(false) };
        if !dry_run {
            println!("\nsweep:{} the comparison of its groups, across their seeds:", self.name());
            crate::report_cmd::print_comparison(&trained.dirs);
            orchestrate::report(&trained.dirs, &self.name(), &self.runs_root);
        }
        Ok(trained.all_ok)
    }

    /// Trains `points` in turn (finished ones are skipped, interrupted ones resumed); `None`
    /// when interrupted. The run folders come back in order, each once. With
    /// `--retrain-baseline`, a baseline this command trained still serves.
    pub fn train(&self, points: &[Vec<String>], dry_run: bool) -> Result<Option<orchestrate::Trained>> {
        let n = points.len();
        println!("sweep:{} runs:{n} folder:{}", self.name(), self.runs_dir().display());
        let mut dirs: Vec<PathBuf> = Vec::new();
        let mut all_ok = true;
        for (i, point) in points.iter().enumerate() {
            if crate::interrupt::requested() {
                println!("sweep:interrupted; the same command continues it");
                return Ok(None);
            }
            println!("sweep:{}/{n} {}", i + 1, point.join(" "));
            let trained = orchestrate::train(&self.plan(point, dry_run)?)
                .with_context(|| format!("sweep run {} ({})", i + 1, point.join(" ")))?;
            all_ok &= trained.all_ok;
            for dir in trained.dirs {
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
            }
        }
        Ok(Some(orchestrate::Trained { dirs, all_ok }))
    }

    /// The array's tasks: each distinct baseline once, then every experiment run without one.
    fn tasks(&self) -> Result<Vec<Vec<String>>> {
        let mut tasks = Vec::new();
        let mut baselines = Vec::new();
        let builtin = PluginDescription::builtin();
        let experiment = match &self.source {
            PluginSource::Builtin => None,
            PluginSource::Library { path } => Some(path.canonicalize().unwrap_or(path.clone())),
        };
        for point in &self.points {
            if experiment.is_none() || !self.no_baseline {
                // The baseline's arm: the overrides it declares (a variant or a plugin-only key is not its business).
                let request = Request { variant: None, ..self.request(point)? };
                let (config, unknown) = resolve_arm(&builtin, &request)?;
                if !baselines.contains(&config.identity()) {
                    baselines.push(config.identity());
                    let known = point.iter().filter(|o| {
                        let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k);
                        key != "variant" && !unknown.iter().any(|u| u == key)
                    });
                    tasks.push(["baseline".to_owned()].into_iter().chain(known.cloned()).collect());
                }
            }
        }
        if let Some(path) = &experiment {
            for point in &self.points {
                let head = [path.display().to_string(), "--no-baseline".to_owned()];
                tasks.push(head.into_iter().chain(point.iter().cloned()).collect());
            }
        }
        Ok(tasks)
    }

    /// A Slurm job array: one task per run, the run folders under the same `runs_dir` on shared
    /// storage, and a last job that waits for the array: `lmhost compare` over the runs, or
    /// `finish` (the lmhost arguments of a study's command, which reuses every finished run and
    /// writes the study's report).
    /// Returns the script and its number of tasks.
    pub fn slurm_script(
        &self,
        lmhost: &Path,
        slurm: &SlurmOptions,
        finish: Option<&[String]>,
    ) -> Result<(String, usize)> {
        let tasks = self.tasks()?;
        let abs = |p: &Path| std::path::absolute(p).unwrap_or(p.to_owned());
        let runs_dir = abs(&self.runs_dir());
        let name = self.name();
        let mut s = String::new();
        let w = &mut s;
        writeln!(w, "#!/usr/bin/env bash")?;
        writeln!(w, "# {name}: {} runs, written by `lmhost … --emit slurm`.", tasks.len())?;
        writeln!(
            w,
            "# Submit with `bash THIS_FILE`: it submits the array, then `lmhost compare` to run after it."
        )?;
        writeln!(w, "#SBATCH --job-name={name}")?;
        writeln!(w, "#SBATCH --array=0-{}", tasks.len() - 1)?;
        writeln!(w, "#SBATCH --cpus-per-task={}", slurm.cpus)?;
        writeln!(w, "#SBATCH --time={}", slurm.time)?;
        let logs = runs_dir.join("slurm");
        writeln!(w, "#SBATCH --output={}/%A_%a.out", logs.display())?;
        if let Some(p) = &slurm.partition {
            writeln!(w, "#SBATCH --partition={p}")?;
        }
        if let Some(g) = &slurm.gpus {
            writeln!(w, "#SBATCH --gpus={g}")?;
        }
        // SIGTERM two minutes before the limit: the run checkpoints and stops `interrupted`,
        // and the requeued task resumes it.
        writeln!(w, "#SBATCH --signal=TERM@120")?;
        writeln!(w, "#SBATCH --requeue")?;
        writeln!(w, "set -euo pipefail")?;
        writeln!(w, "LMHOST=${{LMHOST:-{}}}", quote(&abs(lmhost).display().to_string()))?;
        writeln!(w, "RUNS_DIR={}", quote(&runs_dir.display().to_string()))?;
        writeln!(
            w,
            "export LMHOST_CACHE=${{LMHOST_CACHE:-{}}}",
            quote(&abs(&self.cache_dir).display().to_string())
        )?;
        writeln!(w, "export RAYON_NUM_THREADS=${{SLURM_CPUS_PER_TASK:-{}}}", slurm.cpus)?;
        let mut common = vec!["--preset".to_owned(), self.preset.clone()];
        if let Some(d) = &self.device {
            common.extend(["--device".to_owned(), d.clone()]);
        }
        let common: Vec<String> = common.iter().map(|a| quote(a)).collect();
        for (i, task) in tasks.iter().enumerate() {
            let (plugin, rest) = task.split_first().expect("a task names its plugin");
            let args: Vec<String> = rest.iter().map(|a| quote(a)).collect();
            writeln!(
                w,
                "task_{i}() {{ \"$LMHOST\" run {} {} --runs-dir \"$RUNS_DIR\" --skip-finished --no-report {} \"$@\"; }}",
                quote(plugin),
                common.join(" "),
                args.join(" ")
            )?;
        }
        writeln!(
            w,
            "if [ -n \"${{SLURM_ARRAY_TASK_ID:-}}\" ] && [ \"${{LMHOST_SWEEP_STAGE:-}}\" != compare ]; then"
        )?;
        writeln!(w, "  \"task_${{SLURM_ARRAY_TASK_ID}}\" \"$@\"")?;
        writeln!(w, "elif [ \"${{LMHOST_SWEEP_STAGE:-}}\" = compare ]; then")?;
        match finish {
            None => writeln!(
                w,
                "  runs=(\"$RUNS_DIR\"/*/run.json)\n  exec \"$LMHOST\" compare \"${{runs[@]%/run.json}}\" --out {} --overwrite",
                quote(&abs(&orchestrate::reports_dir(&self.runs_root).join(&name)).display().to_string())
            )?,
            Some(args) => writeln!(
                w,
                "  exec \"$LMHOST\" {} --runs-dir {}",
                args.iter().map(|a| quote(a)).collect::<Vec<_>>().join(" "),
                quote(&abs(&self.runs_root).display().to_string())
            )?,
        }
        writeln!(w, "else")?;
        writeln!(
            w,
            "  mkdir -p {}  # Slurm does not create the log folder",
            quote(&logs.display().to_string())
        )?;
        writeln!(w, "  task_0 --dry-run \"$@\" >/dev/null  # tokenise once here, not in every task at once")?;
        writeln!(w, "  array=$(sbatch --parsable \"$0\" \"$@\")")?;
        writeln!(
            w,
            "  report=$(sbatch --parsable --array=0 --dependency=afterany:\"${{array%%;*}}\" --job-name={name}-compare --export=ALL,LMHOST_SWEEP_STAGE=compare \"$0\" \"$@\")"
        )?;
        writeln!(w, "  echo \"submitted array job $array ({} runs) and compare job $report\"", tasks.len())?;
        writeln!(w, "fi")?;
        Ok((s, tasks.len()))
    }

    /// Writes the job script to `out` [default: `<name>.sbatch`] and says how to submit it.
    pub fn write_slurm(
        &self,
        out: Option<&Path>,
        slurm: &SlurmOptions,
        finish: Option<&[String]>,
    ) -> Result<bool> {
        let (script, tasks) = self.slurm_script(&std::env::current_exe()?, slurm, finish)?;
        let out = out.map_or_else(|| PathBuf::from(format!("{}.sbatch", self.name())), Path::to_owned);
        std::fs::write(&out, script).with_context(|| format!("cannot write {}", out.display()))?;
        println!("wrote {} ({tasks} runs); submit it with: bash {}", out.display(), out.display());
        Ok(true)
    }
}

/// What `--emit` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Emit {
    /// A Slurm job array, one task per run, and a job after it that writes the report.
    Slurm,
}

/// Resources each array task asks for.
#[derive(clap::Args, Debug, Clone)]
pub struct SlurmOptions {
    /// CPUs per task.
    #[arg(long, default_value_t = 4)]
    pub cpus: usize,
    /// Time limit per task (Slurm's format).
    #[arg(long, default_value = "04:00:00")]
    pub time: String,
    /// Partition to submit to.
    #[arg(long)]
    pub partition: Option<String>,
    /// GPUs per task (e.g. 1), for device=cuda:0 runs.
    #[arg(long)]
    pub gpus: Option<String>,
}

/// Eight hex digits of the SHA-256 of `what`: a folder name's stable part.
pub fn short_hash(what: &serde_json::Value) -> String {
    crate::run_store::hex(&Sha256::digest(what.to_string()))[..8].to_owned()
}

fn plugin_name(path: &Path) -> String {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    stem.strip_prefix("lib").unwrap_or(&stem).to_owned()
}

/// A word for bash, single-quoted unless it is plainly safe.
pub fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:+,@%".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn points(s: &str, zip: bool) -> Vec<String> {
        expand(&args(s), zip).unwrap().into_iter().map(|p| p.join(" ")).collect()
    }

    #[test]
    fn a_grid_varies_the_first_key_slowest_and_keeps_fixed_keys() {
        assert_eq!(
            points("steps=5 lr=1,2 seed=7,8,9", false),
            [
                "steps=5 lr=1 seed=7",
                "steps=5 lr=1 seed=8",
                "steps=5 lr=1 seed=9",
                "steps=5 lr=2 seed=7",
                "steps=5 lr=2 seed=8",
                "steps=5 lr=2 seed=9"
            ]
        );
        assert_eq!(points("lr=1", false), ["lr=1"]);
        assert!(!is_sweep(&args("lr=1 dataset=text:a")));
        assert!(is_sweep(&args("lr=1,2")) && is_sweep(&args("seeds=2")));
    }

    #[test]
    fn zip_pairs_by_position_and_seeds_counts_replicates() {
        assert_eq!(points("lr=1,2 warmup=10,20", true), ["lr=1 warmup=10", "lr=2 warmup=20"]);
        assert_eq!(
            points("variant=a,b seeds=2", false),
            ["variant=a seed=1", "variant=a seed=2", "variant=b seed=1", "variant=b seed=2"]
        );
        assert_eq!(points("seed=5 seeds=3", false), ["seed=5", "seed=6", "seed=7"]);
    }

    #[test]
    fn malformed_sweeps_are_refused() {
        let err = |s: &str, zip| expand(&args(s), zip).unwrap_err().to_string();
        assert!(err("lr=1,2 warmup=1,2,3", true).contains("--zip needs lists of one length"));
        assert!(err("lr=1,,2", false).contains("empty value"));
        assert!(err("seeds=0", false).contains("positive count"));
        assert!(err("seeds=2 seed=1,2", false).contains("one or the other"));
        assert!(err("lr", false).contains("not key=value"));
    }

    #[test]
    fn the_same_sweep_gets_the_same_folder() {
        let sweep = |points: &str| Sweep {
            source: PluginSource::Builtin,
            preset: "tiny".into(),
            device: None,
            points: expand(&args(points), false).unwrap(),
            runs_root: "runs".into(),
            cache_dir: "cache".into(),
            no_baseline: false,
            retrain_baseline: false,
            folder: None,
        };
        assert_eq!(sweep("lr=1,2").name(), sweep("lr=1,2").name());
        assert_ne!(sweep("lr=1,2").name(), sweep("lr=1,3").name());
        assert!(sweep("lr=1,2").name().starts_with("sweep-baseline-"));
        assert_eq!(quote("lr=1e-3"), "lr=1e-3");
        assert_eq!(quote("special_tokens=<a> <b>"), "'special_tokens=<a> <b>'");
        assert_eq!(quote("it's"), r"'it'\''s'");
    }
}
