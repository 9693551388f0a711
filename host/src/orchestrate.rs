//! `lmhost run`: resolve both arms' configs, prepare the data once, write each run folder, then
//! train each arm in its own worker process, one after the other, and print the comparison.
//!
//! A plugin is only ever loaded in a child process (the probe, the worker): a library that
//! crashes while loading (a truncated file), panics or dies mid-run takes only that process.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use datasets::PreparedData;
use lmhost_kit::config::Knobs;
use serde::{Deserialize, Serialize};

use crate::config::{resolve_arm, unknown_key_error, ArmConfig, Override, Request, RunConfig};
use crate::events::{duration, human, ArmView, Event};
use crate::plan::{Plan, PlanRecord};
use crate::plugin::{Plugin, PluginDescription, PluginSource};
use crate::run_store::{
    self, Arm, DataRecord, Derived, HostRecord, PluginRecord, RunRecord, RunStore, Status,
};

/// What `lmhost run` was asked to do.
pub struct RunPlan {
    pub source: PluginSource,
    pub request: Request,
    pub runs_dir: PathBuf,
    pub cache_dir: PathBuf,
    /// Train the baseline even when a finished run with the same config exists.
    pub retrain_baseline: bool,
    /// Train only the experiment.
    pub no_baseline: bool,
    /// Skip every arm (not only the baseline) whose finished twin is already in `runs_dir`:
    /// how a sweep started again passes over the runs it finished before.
    pub reuse_finished: bool,
    /// Print what would train and what is already finished; write and train nothing.
    pub dry_run: bool,
}

/// What [`train`] left behind.
pub struct Trained {
    /// One run folder per arm, trained now or reused.
    pub dirs: Vec<PathBuf>,
    /// Every arm finished.
    pub all_ok: bool,
}

/// An arm ready to train (or already trained, when reused).
struct ArmRun {
    label: String,
    dir: PathBuf,
    record: RunRecord,
    reused: bool,
}

/// A plugin's description and one arm's config resolved for it.
#[derive(Debug, Serialize, Deserialize)]
pub struct Probed {
    pub description: PluginDescription,
    pub config: ArmConfig,
    /// Override keys neither the plugin nor the host declares.
    pub unknown: Vec<String>,
}

/// What the probe process reports about a plugin and a request.
#[derive(Debug, Serialize, Deserialize)]
pub enum ProbeReply {
    Ok(Box<Probed>),
    Error { message: String },
}

/// Loads a plugin and resolves `request` for it, in this process (the `probe` subcommand).
pub fn probe_here(source: &PluginSource, request: &Request) -> ProbeReply {
    let result = (|| -> Result<ProbeReply> {
        let plugin = Plugin::open(source)?;
        let (mut config, unknown) = resolve_arm(&plugin.description, request)?;
        config.model = plugin
            .resolve_model_config(&config.model)
            .map_err(|e| anyhow::anyhow!("{} {e}", plugin.description.name))?;
        Ok(ProbeReply::Ok(Box::new(Probed { description: plugin.description, config, unknown })))
    })();
    result.unwrap_or_else(|e| ProbeReply::Error { message: format!("{e:#}") })
}

/// Runs the probe in a child process.
pub fn probe(source: &PluginSource, request: &Request) -> Result<Probed> {
    let out = Command::new(std::env::current_exe()?)
        .arg("probe")
        .arg(serde_json::to_string(source)?)
        .arg(serde_json::to_string(request)?)
        .stdin(Stdio::null())
        .output()
        .context("cannot start an lmhost probe process")?;
    let reply: Option<ProbeReply> = serde_json::from_slice(&out.stdout).ok();
    match reply {
        Some(ProbeReply::Ok(probed)) => Ok(*probed),
        Some(ProbeReply::Error { message }) => bail!("{message}"),
        None => bail!(
            "{} crashed the process that loaded it ({}); the file is probably truncated or corrupt: rebuild it with `cargo build --release --workspace`",
            source.label(),
            exit_description(&out.status)
        ),
    }
}

fn exit_description(status: &std::process::ExitStatus) -> String {
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        if let Some(sig) = status.signal() {
            let name = match sig {
                6 => "SIGABRT",
                7 => "SIGBUS",
                9 => "SIGKILL",
                11 => "SIGSEGV",
                _ => "a signal",
            };
            return format!("{name}, signal {sig}");
        }
    }
    format!("exit status {}", status.code().unwrap_or(-1))
}

/// One arm with its resolved config, before its run folder exists.
struct PlannedArm {
    arm: Arm,
    label: String,
    description: PluginDescription,
    source: PluginSource,
    request: Request,
    config: ArmConfig,
}

pub fn run(plan: &RunPlan) -> Result<bool> {
    let trained = train(plan)?;
    if plan.dry_run {
        return Ok(true);
    }
    let name = trained.dirs.last().and_then(|d| d.file_name()).map(|n| n.to_string_lossy().into_owned());
    report(&trained.dirs, &name.unwrap_or_default());
    Ok(trained.all_ok)
}

/// Writes the comparison report over `dirs` and prints its path; a report that cannot be
/// written is a note, not a failure of the runs.
pub fn report(dirs: &[PathBuf], name: &str) {
    match crate::report_cmd::report_after_run(dirs, name) {
        Ok(path) => println!("report: {}", path.display()),
        Err(e) => {
            eprintln!("note: no report written: {}", format!("{e:#}").lines().next().unwrap_or_default())
        }
    }
}

/// Resolves the arms, prepares the data, writes each run folder and trains each arm (or, for a
/// dry run, only says what would happen), then prints the arms' table.
pub fn train(plan: &RunPlan) -> Result<Trained> {
    let mut planned = resolve_arms(plan)?;
    let mut run_config = planned[0].config.run_config()?;
    check_device(&run_config.device, &planned)?;
    let data = crate::events::prepare_data(&run_config.data_settings(), &plan.cache_dir)
        .with_context(|| format!("cannot prepare dataset `{}`", run_config.dataset))?;
    let stages = match run_config.plan.as_str() {
        "" => None,
        file => {
            if plan.request.overrides.iter().any(|o| o.key == "steps") {
                bail!("steps follows from the plan's token budgets; leave steps out when plan= is given");
            }
            let record = prepare_plan(Path::new(file), &run_config, &data, &plan.cache_dir)?;
            run_config.steps = record.stages.iter().map(|s| s.steps).sum();
            for arm in &mut planned {
                arm.config.run.insert("steps".into(), run_config.steps.into());
            }
            Some(record)
        }
    };
    let derived = Derived {
        tokens_per_step: run_config.tokens_per_step(),
        accumulation: run_config.accumulation(),
        total_tokens: run_config.tokens_per_step() * run_config.steps,
        vocab_size: data.manifest.vocab_size,
    };
    if !plan.dry_run {
        print_plan(&run_config, &data, &derived);
    }
    if let Some(p) = &stages {
        for s in &p.stages {
            println!("stage:{} steps:{}..{}", s.name, s.first_step, s.first_step + s.steps - 1);
        }
    }
    let mut arms = create_runs(plan, planned, &data, stages.as_ref(), &derived)?;
    let mut all_ok = true;
    if plan.dry_run {
        return Ok(Trained { dirs: arms.into_iter().map(|a| a.dir).collect(), all_ok });
    }
    for arm in arms.iter_mut().filter(|a| !a.reused) {
        if crate::interrupt::requested() {
            break;
        }
        all_ok &= train_arm(arm, false, &[])?;
    }
    print_summary(&arms);
    Ok(Trained { dirs: arms.iter().map(|a| a.dir.clone()).collect(), all_ok })
}

/// Both arms' configs: the experiment's through a probe process, the baseline's in-process.
/// An override is an error only when no arm declares it; the arms must share data and budget.
fn resolve_arms(plan: &RunPlan) -> Result<Vec<PlannedArm>> {
    let experiment = match &plan.source {
        PluginSource::Builtin => None,
        source => Some(probe(source, &plan.request)?),
    };
    if experiment.is_none() && plan.request.variant.is_some() {
        bail!("the built-in baseline has no variants");
    }
    let mut arms = Vec::new();
    let mut unknown_per_arm = Vec::new();
    if experiment.is_none() || !plan.no_baseline {
        let description = PluginDescription::builtin();
        let request = Request { variant: None, ..plan.request.clone() };
        let (mut config, unknown) = resolve_arm(&description, &request)?;
        config.model = Plugin::builtin()
            .resolve_model_config(&config.model)
            .map_err(|e| anyhow::anyhow!("baseline {e}"))?;
        unknown_per_arm.push(unknown);
        arms.push(PlannedArm {
            arm: Arm::Baseline,
            label: "baseline".into(),
            description,
            source: PluginSource::Builtin,
            request,
            config,
        });
    }
    if let Some(Probed { description, config, unknown }) = experiment {
        unknown_per_arm.push(unknown);
        arms.push(PlannedArm {
            arm: Arm::Experiment,
            label: description.name.clone(),
            description,
            source: plan.source.clone(),
            request: plan.request.clone(),
            config,
        });
    }
    if let Some(key) =
        plan.request.overrides.iter().map(|o| &o.key).find(|k| unknown_per_arm.iter().all(|u| u.contains(k)))
    {
        let mut fields = RunConfig::fields();
        for a in &arms {
            fields.extend(a.description.fields.iter().cloned());
        }
        return Err(unknown_key_error(key, &fields.iter().collect::<Vec<_>>()));
    }
    if let [a, b] = &arms[..] {
        check_same_footing(a, b)?;
    }
    Ok(arms)
}

/// A fair comparison: the same data, seed and token budget in both arms (a variant may change,
/// say, the learning rate, but not these).
fn check_same_footing(a: &PlannedArm, b: &PlannedArm) -> Result<()> {
    const SHARED: &[&str] = &[
        "dataset",
        "vocab_size",
        "val_fraction",
        "split_seed",
        "tokenizer",
        "special_tokens",
        "plan",
        "seed",
        "steps",
        "batch_size",
        "context_length",
        "eval_windows",
    ];
    for key in SHARED {
        if a.config.run.get(*key) != b.config.run.get(*key) {
            bail!(
                "{key} differs between the arms ({}: {}, {}: {}); both arms must share data, seed and budget",
                a.label,
                a.config.run.get(*key).unwrap_or(&serde_json::Value::Null),
                b.label,
                b.config.run.get(*key).unwrap_or(&serde_json::Value::Null)
            );
        }
    }
    Ok(())
}

/// The numbers derived once from the config, printed before anything trains.
fn print_plan(c: &RunConfig, data: &PreparedData, derived: &Derived) {
    println!(
        "data:{} vocab:{} train_tokens:{} val_tokens:{} (held-out documents: {})",
        c.dataset,
        derived.vocab_size,
        human(data.manifest.train_tokens as f64),
        human(data.manifest.val_tokens as f64),
        data.manifest.val_document_count
    );
    println!(
        "tokens per step will be {} = {} sequences × {} tokens ({} micro-batches of {}); {} steps = {} tokens per arm",
        derived.tokens_per_step,
        c.batch_size,
        c.context_length,
        derived.accumulation,
        c.micro_batch_size,
        c.steps,
        human(derived.total_tokens as f64)
    );
}

/// One run folder per arm, written before anything trains; a finished baseline with the same
/// fingerprint (in a sweep, any finished arm) is reused instead. A dry run prints each arm's
/// overrides and whether it would train, and writes nothing.
fn create_runs(
    plan: &RunPlan,
    planned: Vec<PlannedArm>,
    data: &PreparedData,
    stages: Option<&PlanRecord>,
    derived: &Derived,
) -> Result<Vec<ArmRun>> {
    let store = RunStore::new(&plan.runs_dir);
    let data_record = DataRecord { cache_dir: data.dir.clone(), manifest: data.manifest.clone() };
    let comparing = planned.len() > 1;
    let mut runs = Vec::new();
    for p in planned {
        let mut record =
            new_record(p.arm, &p.description, &p.source, &p.request, p.config, &data_record, derived)?;
        if let Some(stages) = stages {
            record.plan = Some(stages.clone());
            record.fingerprint = record.compute_fingerprint();
        }
        let reusable = plan.reuse_finished || (p.arm == Arm::Baseline && comparing && !plan.retrain_baseline);
        let reuse = reusable.then(|| store.find_finished(&record.fingerprint)).flatten();
        if plan.dry_run {
            let overrides: Vec<String> =
                p.request.overrides.iter().map(|o| format!("{}={}", o.key, o.value)).collect();
            let variant =
                record.plugin.variant.as_deref().map(|v| format!(" variant={v}")).unwrap_or_default();
            let what = match &reuse {
                Some((dir, _)) => format!("finished: {}", dir.display()),
                None => "to train".to_owned(),
            };
            println!("dry-run arm:{}{variant} {} ({what})", p.label, overrides.join(" "));
            runs.push(ArmRun { label: p.label, dir: PathBuf::new(), record, reused: true });
            continue;
        }
        runs.push(match reuse {
            Some((dir, record)) => {
                println!(
                    "arm:{} reusing {} (same config, data and host{})",
                    p.label,
                    dir.display(),
                    if p.arm == Arm::Baseline { "; --retrain-baseline trains it again" } else { "" }
                );
                ArmRun { label: p.label, dir, record, reused: true }
            }
            None => create_arm(&store, &p.label, record)?,
        });
    }
    Ok(runs)
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

/// `lmhost resume`: continues a run that did not finish from its last checkpoint, in a worker
/// as `run` does, then prints its table and writes its report.
///
/// Host-key `overrides` (a lower `lr`, more `steps`, …) apply from the checkpoint on; the worker
/// records them in `run.json` and marks the rows trained under them in the stats. A finished
/// run can be resumed only to train further (`steps=` above its own).
pub fn resume(dir: &Path, overrides: &[Override]) -> Result<bool> {
    let record = run_store::read_record(dir)?;
    let mut changed = record.config.clone();
    crate::config::apply_host_overrides(&mut changed, overrides, "resume")?;
    let longer = changed.run_config()?.steps > record.config.run_config()?.steps;
    if record.status == Status::Finished && !longer {
        bail!(
            "{} already finished; `lmhost resume {} steps=N` with N above its steps trains further, `lmhost branch` starts children",
            dir.display(),
            dir.display()
        );
    }
    let label = match record.arm {
        Arm::Baseline => "baseline".to_owned(),
        Arm::Experiment => record.plugin.name.clone(),
    };
    let mut arm = ArmRun { label, dir: dir.to_owned(), record, reused: false };
    let ok = train_arm(&mut arm, true, overrides)?;
    print_summary(std::slice::from_ref(&arm));
    report(&[arm.dir.clone()], &arm.record.id);
    Ok(ok)
}

/// `lmhost branch`: children that start from the parent's checkpoint at `step` and differ in
/// data order (seed) or in the host keys overridden; each trains as a resumed run, then one
/// report covers the parent and its children.
pub fn branch(
    parent: &Path,
    step: u64,
    children: u64,
    overrides: &[crate::config::Override],
) -> Result<bool> {
    let record = run_store::read_record(parent)?;
    let checkpoint = parent.join(format!("checkpoints/step_{step:06}.safetensors"));
    if !checkpoint.is_file() {
        let have: Vec<String> = crate::restore::step_checkpoints(parent)
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        bail!(
            "{} has no checkpoint at step {step} (it has: {}); train the parent with checkpoint_every=N",
            parent.display(),
            if have.is_empty() { "none".to_owned() } else { have.join(", ") }
        );
    }
    crate::config::apply_host_overrides(&mut record.config.clone(), overrides, "a branch")?;
    let parent_seed = record.config.run_config()?.seed;
    let given_seed = overrides.iter().find(|o| o.key == "seed");
    let store = RunStore::new(parent.parent().unwrap_or(Path::new(".")));
    let mut arms = Vec::new();
    for i in 0..children {
        let mut child = record.clone();
        let kept: Vec<Override> = overrides.iter().filter(|o| o.key != "seed").cloned().collect();
        crate::config::apply_host_overrides(&mut child.config, &kept, "a branch")?;
        let seed = match given_seed {
            Some(o) => {
                o.value.parse::<u64>().with_context(|| format!("seed={}: expected an integer", o.value))? + i
            }
            None => parent_seed + 1 + i,
        };
        child.config.run.insert("seed".into(), seed.into());
        child.config.run_config()?.check()?;
        child.status = Status::Pending;
        child.created_at = run_store::timestamp();
        (child.result, child.error, child.resumes) = (None, None, Vec::new());
        child.branch = Some(run_store::BranchRecord { parent: std::path::absolute(parent)?, step });
        child.fingerprint = child.compute_fingerprint();
        let (id, dir) = store.create_dir(&record.plugin.name, record.plugin.variant.as_deref(), seed)?;
        child.id = id;
        std::fs::create_dir_all(dir.join("checkpoints"))?;
        for (from, to) in [
            (checkpoint.clone(), dir.join(format!("checkpoints/step_{step:06}.safetensors"))),
            (parent.join("stats.arrows"), dir.join("stats.arrows")),
            (parent.join("tokenizer.json"), dir.join("tokenizer.json")),
        ] {
            std::fs::copy(&from, &to).with_context(|| format!("cannot copy {}", from.display()))?;
        }
        run_store::write_record(&dir, &child)?;
        println!("branch:{} seed:{seed} from step {step} run:{}", i + 1, dir.display());
        arms.push(ArmRun { label: format!("child{}", i + 1), dir, record: child, reused: false });
    }
    let mut all_ok = true;
    for arm in &mut arms {
        if crate::interrupt::requested() {
            break;
        }
        all_ok &= train_arm(arm, true, &[])?;
    }
    print_summary(&arms);
    let dirs: Vec<PathBuf> =
        std::iter::once(parent.to_owned()).chain(arms.iter().map(|a| a.dir.clone())).collect();
    report(&dirs, &format!("{}-branch-{step}", record.id));
    Ok(all_ok)
}

/// Refuses a device this build or this machine does not have, before anything is written.
/// Refuses a device this build, this machine or a plugin does not have, before anything is
/// written.
fn check_device(device: &str, arms: &[PlannedArm]) -> Result<()> {
    lmhost_kit::trainer::parse_device(device).map_err(|e| anyhow::anyhow!("{e}"))?;
    plugins_support(device, arms)
}

/// A plugin built without CUDA cannot train on a GPU, even when the host can.
fn plugins_support(device: &str, arms: &[PlannedArm]) -> Result<()> {
    if !device.starts_with("cuda") {
        return Ok(());
    }
    match arms.iter().find(|a| a.description.features.as_ref().is_some_and(|f| !f.iter().any(|f| f == "cuda"))) {
        Some(arm) => bail!(
            "{} was built without CUDA, so it cannot train on {device}: rebuild it with `cargo build --release --workspace --features lmhost/cuda`",
            arm.source.label()
        ),
        None => Ok(()),
    }
}

fn new_record(
    arm: Arm,
    description: &PluginDescription,
    source: &PluginSource,
    request: &Request,
    config: ArmConfig,
    data: &DataRecord,
    derived: &Derived,
) -> Result<RunRecord> {
    let sha256 = match source {
        PluginSource::Library { path } => Some(run_store::sha256_file(path)?),
        PluginSource::Builtin => None,
    };
    let mut record = RunRecord {
        format: run_store::RUN_FORMAT,
        id: String::new(),
        arm,
        status: Status::Pending,
        created_at: run_store::timestamp(),
        updated_at: String::new(),
        plugin: PluginRecord {
            name: description.name.clone(),
            version: description.version.clone(),
            api_version: description.api_version.clone(),
            variant: match arm {
                Arm::Experiment => {
                    request.variant.clone().or_else(|| description.variants.first().map(|v| v.name.clone()))
                }
                Arm::Baseline => None,
            },
            source: match source {
                PluginSource::Library { path } => {
                    PluginSource::Library { path: path.canonicalize().unwrap_or(path.clone()) }
                }
                other => other.clone(),
            },
            sha256,
        },
        host: HostRecord::current(),
        request: request.clone(),
        config,
        data: data.clone(),
        plan: None,
        derived: derived.clone(),
        fingerprint: String::new(),
        result: None,
        error: None,
        resumes: Vec::new(),
        branch: None,
    };
    record.fingerprint = record.compute_fingerprint();
    Ok(record)
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

/// Trains one arm in a worker process (resuming, with host-key `overrides`, when `resume`);
/// false when it did not finish.
fn train_arm(arm: &mut ArmRun, resume: bool, overrides: &[Override]) -> Result<bool> {
    let log_path = arm.dir.join("worker.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(resume)
        .write(true)
        .truncate(!resume)
        .open(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("worker")
        .arg(&arm.dir)
        .args(resume.then_some("--resume"))
        .args(overrides.iter().flat_map(|o| ["--set".to_owned(), format!("{}={}", o.key, o.value)]))
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("cannot start an lmhost worker process")?;
    crate::interrupt::set_worker(Some(child.id()));
    let mut view = ArmView::new(&arm.label);
    let mut stopped = None;
    for line in BufReader::new(child.stdout.take().expect("piped stdout")).lines() {
        let Ok(line) = line else { break };
        match serde_json::from_str::<Event>(&line) {
            Ok(event) => {
                view.show(&event);
                if let Event::Stopped { message, .. } = &event {
                    stopped = Some(message.clone());
                }
            }
            Err(_) => println!("arm:{} {line}", arm.label),
        }
    }
    let status = child.wait()?;
    crate::interrupt::set_worker(None);
    arm.record = run_store::read_record(&arm.dir)?;
    if status.success() && arm.record.status == Status::Finished {
        return Ok(true);
    }
    if stopped.is_none() {
        // The worker died without a word (a crash in the plugin's native code, a kill).
        let message = format!(
            "the worker process died ({}); its log is {}",
            exit_description(&status),
            log_path.display()
        );
        if matches!(arm.record.status, Status::Pending | Status::Running) {
            arm.record.status = Status::Failed;
            arm.record.error = Some(message.clone());
            run_store::write_record(&arm.dir, &arm.record)?;
        }
        view.show(&Event::Stopped { status: Status::Failed, message });
    }
    Ok(false)
}

fn print_summary(arms: &[ArmRun]) {
    println!();
    println!(
        "{:<14} {:<10} {:>9} {:>8} {:>15} {:>7} {:>7}  run",
        "arm", "status", "val loss", "val acc", "params tr/prod", "tok/s", "wall"
    );
    for a in arms {
        let r = a.record.result.clone().unwrap_or_default();
        let opt = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<14} {:<10} {:>9} {:>8} {:>15} {:>7} {:>7}  {}",
            a.label,
            a.record.status.as_str(),
            opt(r.val_loss, 4),
            opt(r.val_accuracy, 4),
            format!("{}/{}", human(r.params_train as f64), human(r.params_prod as f64)),
            human(r.tokens_per_s),
            duration(r.wall_s),
            a.dir.display()
        );
    }
    if let [b, e] = arms {
        if let (Some(bl), Some(el)) = (
            b.record.result.as_ref().and_then(|r| r.val_loss),
            e.record.result.as_ref().and_then(|r| r.val_loss),
        ) {
            if b.record.status == Status::Finished && e.record.status == Status::Finished {
                println!("val loss difference ({} − baseline): {:+.4} nats/token (one seed; use several seeds before trusting it)", e.label, el - bl);
            }
        }
    }
    for a in arms {
        if let Some(err) = &a.record.error {
            eprintln!("error: {} arm ({}): {err}", a.label, a.record.status.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(label: &str, overrides: &[&str]) -> PlannedArm {
        let description = PluginDescription::builtin();
        let request = Request {
            preset: "tiny".into(),
            variant: None,
            overrides: overrides.iter().map(|o| o.parse().unwrap()).collect(),
        };
        let (config, _) = resolve_arm(&description, &request).unwrap();
        PlannedArm {
            arm: Arm::Baseline,
            label: label.into(),
            description,
            source: PluginSource::Builtin,
            request,
            config,
        }
    }

    #[test]
    fn a_plugin_built_without_cuda_is_refused_for_a_gpu() {
        let mut arm = planned("a", &[]);
        arm.description.features = Some(Vec::new());
        let err = plugins_support("cuda:0", std::slice::from_ref(&arm)).unwrap_err().to_string();
        assert!(err.contains("built without CUDA") && err.contains("--features lmhost/cuda"), "{err}");
        assert!(plugins_support("cpu", std::slice::from_ref(&arm)).is_ok());
        arm.description.features = Some(vec!["cuda".into()]);
        assert!(plugins_support("cuda:0", std::slice::from_ref(&arm)).is_ok());
        arm.description.features = None; // built before plugins said: the worker's error decides
        assert!(plugins_support("cuda:0", &[arm]).is_ok());
    }

    #[test]
    fn arms_must_share_data_seed_and_budget() {
        assert!(check_same_footing(&planned("a", &["lr=1e-3"]), &planned("b", &["lr=3e-4"])).is_ok());
        let err = check_same_footing(&planned("a", &[]), &planned("b", &["seed=2"])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "seed differs between the arms (a: 1, b: 2); both arms must share data, seed and budget"
        );
        assert!(check_same_footing(&planned("a", &[]), &planned("b", &["steps=3"])).is_err());
    }
}
