//! `lmhost run`: decide each arm ([`run_plan`](crate::run_plan)), prepare the data once, write each
//! new run folder, train each arm in its own worker process ([`worker`](crate::worker)), one after
//! the other, print the arms' table and write the report beside the runs.
//!
//! A plugin is only ever loaded in a child process (the probe, the worker): a library that
//! crashes while loading (a truncated file), panics or dies mid-run takes only that process.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use datasets::PreparedData;

use crate::config::RunConfig;
use crate::console::{print_plan, print_summary};
use crate::plan::{Plan, PlanRecord};
use crate::run_plan::{check_device, decide, print_dry_run, resolve_arms, Decision, RunPlan};
use crate::run_store::{self, DataRecord, Derived, RunRecord, RunStore};
use crate::worker::{train_arm, ArmRun};

/// What [`train`] left behind.
pub struct Trained {
    /// One run folder per arm, trained now or reused.
    pub dirs: Vec<PathBuf>,
    /// Every arm finished.
    pub all_ok: bool,
}

pub fn run(plan: &RunPlan) -> Result<bool> {
    let trained = train(plan)?;
    if plan.dry_run || !plan.report {
        return Ok(trained.all_ok);
    }
    let name = trained.dirs.last().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned());
    report(&trained.dirs, &name.unwrap_or_default(), &plan.runs_root);
    Ok(trained.all_ok)
}

/// Where the reports of the runs under `runs_root` go: `reports/` beside it (`runs` →
/// `reports`, `/scratch/exp/runs` → `/scratch/exp/reports`).
pub fn reports_dir(runs_root: &Path) -> PathBuf {
    runs_root.parent().unwrap_or(Path::new("")).join("reports")
}

/// Writes the comparison report over `dirs` beside the runs and prints its path; a report that
/// cannot be written is a note, not a failure of the runs.
pub fn report(dirs: &[PathBuf], name: &str, runs_root: &Path) {
    match crate::report_cmd::report_after_run(dirs, name, &reports_dir(runs_root)) {
        Ok(path) => println!("report: {}", path.display()),
        Err(e) => {
            eprintln!("note: no report written: {}", format!("{e:#}").lines().next().unwrap_or_default())
        }
    }
}

/// Decides the arms, prepares the data, writes each new run folder and trains each arm (a dry
/// run prints the decisions instead), then prints the arms' table.
pub fn train(plan: &RunPlan) -> Result<Trained> {
    let planned = resolve_arms(plan)?;
    let run_config = planned[0].config.run_config()?;
    check_device(&run_config.device, &planned)?;
    if !plan.dry_run {
        check_writable(&plan.runs_dir)?;
    }
    if let Some(note) = crate::hf::dropout_note(&run_config.init) {
        eprintln!("{note}");
    }
    let data = crate::events::prepare_data(&run_config.data_settings(), &plan.cache_dir)
        .with_context(|| format!("cannot prepare dataset `{}`", run_config.dataset))?;
    let stages = match run_config.plan.as_str() {
        "" => None,
        file => Some(prepare_plan(Path::new(file), &run_config, &data, &plan.cache_dir)?),
    };
    let derived = Derived {
        tokens_per_step: run_config.tokens_per_step(),
        accumulation: run_config.accumulation(),
        total_tokens: run_config.tokens_per_step() * run_config.steps,
        vocab_size: data.manifest.vocab_size,
    };
    let data_record = DataRecord { cache_dir: data.dir.clone(), manifest: data.manifest.clone() };
    let decisions = decide(plan, &planned, &data_record, stages.as_ref(), &derived)?;
    if plan.dry_run {
        print_dry_run(&planned, &decisions);
        let dirs = decisions
            .iter()
            .map(|d| match d {
                Decision::Reuse { dir, .. } | Decision::Resume { dir, .. } => dir.clone(),
                Decision::Train(_) => PathBuf::new(),
            })
            .collect();
        return Ok(Trained { dirs, all_ok: true });
    }
    print_plan(&run_config, &data, &derived);
    if let Some(p) = &stages {
        for s in &p.stages {
            println!("stage:{} steps:{}..{}", s.name, s.first_step, s.first_step + s.steps - 1);
        }
    }
    let store = RunStore::new(&plan.runs_dir);
    let mut arms = Vec::new();
    for (p, decision) in planned.iter().zip(decisions) {
        arms.push(match decision {
            Decision::Reuse { dir, record } => {
                println!(
                    "arm:{} reusing {} (same config, data and host{})",
                    p.label,
                    dir.display(),
                    if p.arm == run_store::Arm::Baseline {
                        "; --retrain-baseline trains it again"
                    } else {
                        ""
                    }
                );
                (ArmRun { label: p.label.clone(), dir, record, reused: true }, false)
            }
            Decision::Resume { dir, .. } => {
                println!("arm:{} resuming the interrupted {}", p.label, dir.display());
                let record = crate::lineage::prepare_resume(&dir, &[], None)?;
                (ArmRun { label: p.label.clone(), dir, record, reused: false }, true)
            }
            Decision::Train(record) => (create_arm(&store, &p.label, record)?, false),
        });
    }
    let mut all_ok = true;
    for (arm, resume) in arms.iter_mut().filter(|(a, _)| !a.reused) {
        if crate::interrupt::requested() {
            break;
        }
        all_ok &= train_arm(arm, *resume)?;
    }
    let arms: Vec<ArmRun> = arms.into_iter().map(|(a, _)| a).collect();
    print_summary(&arms, !plan.sweep);
    Ok(Trained { dirs: arms.iter().map(|a| a.dir.clone()).collect(), all_ok })
}

/// Refuses a runs folder that cannot be written, before the data is prepared.
fn check_writable(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the runs folder {}", dir.display()))?;
    let probe = dir.join(format!(".lmhost-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("cannot write into the runs folder {}", dir.display()))?;
    let _ = std::fs::remove_file(probe);
    Ok(())
}

/// Reads the plan and tokenises every stage source with the run's tokenizer (training-only:
/// the run's `dataset` keeps the validation set, and a stage that names it reads its training
/// split).
fn prepare_plan(file: &Path, run: &RunConfig, data: &PreparedData, cache_dir: &Path) -> Result<PlanRecord> {
    let plan = Plan::load(file)?;
    let mut caches = Vec::new();
    for stage in &plan.stages {
        let mut dirs = Vec::new();
        for source in &stage.data {
            if source.source == run.dataset {
                // The run's own data: its training split, never its held-out documents.
                dirs.push(data.dir.clone());
                continue;
            }
            let settings = datasets::DataSettings {
                dataset: source.source.clone(),
                val_fraction: 0.0,
                tokenizer: data.tokenizer_path().display().to_string(),
                special_tokens: String::new(),
                ..run.data_settings()
            };
            let prepared = crate::events::prepare_data(&settings, cache_dir).with_context(|| {
                format!("cannot prepare `{}` of plan stage `{}`", source.source, stage.name)
            })?;
            if prepared.train.len() <= run.context_length + 1 {
                bail!(
                    "`{}` of plan stage `{}` has {} tokens, fewer than one training window",
                    source.source,
                    stage.name,
                    prepared.train.len()
                );
            }
            dirs.push(prepared.dir);
        }
        caches.push(dirs);
    }
    let stages = plan.spans(run.tokens_per_step(), caches);
    Ok(PlanRecord { file: std::path::absolute(file).unwrap_or(file.to_owned()), plan, stages })
}

fn create_arm(store: &RunStore, label: &str, mut record: RunRecord) -> Result<ArmRun> {
    let seed = record.config.run_config()?.seed;
    let (id, dir) = store.create_dir(&record.plugin.name, record.plugin.variant.as_deref(), seed)?;
    record.id = id;
    run_store::write_record(&dir, &record)?;
    // The run keeps its own tokenizer, so it can be read and sampled without the cache.
    let tokenizer = record.data.cache_dir.join("tokenizer.json");
    std::fs::copy(&tokenizer, dir.join("tokenizer.json"))
        .with_context(|| format!("cannot copy {}", tokenizer.display()))?;
    println!("arm:{label} run:{}", dir.display());
    Ok(ArmRun { label: label.to_owned(), dir, record, reused: false })
}
