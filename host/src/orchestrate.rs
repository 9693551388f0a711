//! `lmhost run`: resolve both arms' configs, prepare the data once, write each run folder, then
//! train each arm in its own worker process, one after the other, and print the comparison.
//!
//! A plugin is only ever loaded in a child process (the probe, the worker): a library that
//! crashes while loading (a truncated file), panics or dies mid-run takes only that process.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use datasets::PreparedData;
use lmhost_kit::config::Knobs;
use serde::{Deserialize, Serialize};

use crate::config::{resolve_arm, unknown_key_error, ArmConfig, Request, RunConfig};
use crate::events::{duration, human, ArmView, Event};
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
        Ok(ProbeReply::Ok(Box::new(Probed {
            description: plugin.description,
            config,
            unknown,
        })))
    })();
    result.unwrap_or_else(|e| ProbeReply::Error {
        message: format!("{e:#}"),
    })
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

pub fn run(plan: &RunPlan) -> Result<bool> {
    // 1. Configs: the experiment through a probe process, the baseline in-process.
    let baseline_desc = PluginDescription::builtin();
    let experiment = match &plan.source {
        PluginSource::Builtin => None,
        source => Some(probe(source, &plan.request)?),
    };
    let with_baseline = experiment.is_none() || !plan.no_baseline;
    let baseline_request = Request {
        variant: None,
        ..plan.request.clone()
    };
    let baseline = if with_baseline {
        if plan.request.variant.is_some() && experiment.is_none() {
            bail!("the built-in baseline has no variants");
        }
        let (mut config, unknown) = resolve_arm(&baseline_desc, &baseline_request)?;
        config.model = Plugin::builtin()
            .resolve_model_config(&config.model)
            .map_err(|e| anyhow::anyhow!("baseline {e}"))?;
        Some((config, unknown))
    } else {
        None
    };
    // A key is an error only when no arm declares it.
    let unknown_everywhere: Vec<&String> = plan
        .request
        .overrides
        .iter()
        .map(|o| &o.key)
        .filter(|k| {
            experiment.as_ref().is_none_or(|e| e.unknown.contains(k))
                && baseline.as_ref().is_none_or(|(_, u)| u.contains(k))
        })
        .collect();
    if let Some(key) = unknown_everywhere.first() {
        let mut fields = RunConfig::fields();
        fields.extend(baseline_desc.fields.iter().cloned());
        if let Some(e) = &experiment {
            fields.extend(e.description.fields.iter().cloned());
        }
        return Err(unknown_key_error(key, &fields.iter().collect::<Vec<_>>()));
    }

    // 2. Data, prepared once for both arms (data settings are host knobs, equal in both).
    let any_config = baseline
        .as_ref()
        .map(|b| &b.0)
        .or(experiment.as_ref().map(|e| &e.config))
        .expect("at least one arm");
    let run_config = any_config.run_config()?;
    check_device(&run_config.device)?;
    let data = PreparedData::prepare(&run_config.data_settings(), &plan.cache_dir)
        .with_context(|| format!("cannot prepare dataset `{}`", run_config.dataset))?;
    let derived = Derived {
        tokens_per_step: run_config.tokens_per_step(),
        accumulation: run_config.accumulation(),
        total_tokens: run_config.tokens_per_step() * run_config.steps,
        vocab_size: data.manifest.vocab_size,
    };
    println!(
        "data:{} vocab:{} train_tokens:{} val_tokens:{} (held-out works: {})",
        run_config.dataset,
        derived.vocab_size,
        human(data.manifest.train_tokens as f64),
        human(data.manifest.val_tokens as f64),
        data.manifest.val_documents.len()
    );
    println!(
        "tokens per step will be {} = {} sequences × {} tokens ({} micro-batches of {}); {} steps = {} tokens per arm",
        derived.tokens_per_step,
        run_config.batch_size,
        run_config.context_length,
        derived.accumulation,
        run_config.micro_batch_size,
        run_config.steps,
        human(derived.total_tokens as f64)
    );

    // 3. One run folder per arm, written before anything trains.
    let store = RunStore::new(&plan.runs_dir);
    let data_record = DataRecord {
        cache_dir: data.dir.clone(),
        manifest: data.manifest.clone(),
    };
    let mut arms = Vec::new();
    if let Some((config, _)) = baseline {
        let record = new_record(
            Arm::Baseline,
            &baseline_desc,
            &PluginSource::Builtin,
            &baseline_request,
            config,
            &data_record,
            &derived,
        )?;
        let reuse = (!plan.retrain_baseline && experiment.is_some())
            .then(|| store.find_finished(&record.fingerprint))
            .flatten();
        arms.push(match reuse {
            Some((dir, record)) => {
                println!("arm:baseline reusing {} (same config, data and host; --retrain-baseline trains it again)", dir.display());
                ArmRun { label: "baseline".into(), dir, record, reused: true }
            }
            None => create_arm(&store, "baseline", record)?,
        });
    }
    if let Some(Probed {
        description,
        config,
        ..
    }) = &experiment
    {
        let record = new_record(
            Arm::Experiment,
            description,
            &plan.source,
            &plan.request,
            config.clone(),
            &data_record,
            &derived,
        )?;
        arms.push(create_arm(&store, &description.name, record)?);
    }

    // 4. Train, one worker process per arm.
    let mut all_ok = true;
    for arm in &mut arms {
        if !arm.reused {
            all_ok &= train_arm(arm)?;
        }
    }
    print_summary(&arms);
    Ok(all_ok)
}

fn check_device(device: &str) -> Result<()> {
    if device != "cpu" && !cfg!(feature = "cuda") {
        bail!("device {device} needs CUDA, and this lmhost was built without it: rebuild with `cargo build --release --workspace --features lmhost/cuda`");
    }
    Ok(())
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
                Arm::Experiment => request
                    .variant
                    .clone()
                    .or_else(|| description.variants.first().map(|v| v.name.clone())),
                Arm::Baseline => None,
            },
            source: match source {
                PluginSource::Library { path } => PluginSource::Library {
                    path: path.canonicalize().unwrap_or(path.clone()),
                },
                other => other.clone(),
            },
            sha256,
        },
        host: HostRecord::current(),
        request: request.clone(),
        config,
        data: data.clone(),
        derived: derived.clone(),
        fingerprint: String::new(),
        result: None,
        error: None,
    };
    record.fingerprint = record.compute_fingerprint();
    Ok(record)
}

fn create_arm(store: &RunStore, label: &str, mut record: RunRecord) -> Result<ArmRun> {
    let seed = record.config.run_config()?.seed;
    let (id, dir) =
        store.create_dir(&record.plugin.name, record.plugin.variant.as_deref(), seed)?;
    record.id = id;
    run_store::write_record(&dir, &record)?;
    println!("arm:{label} run:{}", dir.display());
    Ok(ArmRun {
        label: label.to_owned(),
        dir,
        record,
        reused: false,
    })
}

/// Trains one arm in a worker process; false when it did not finish.
fn train_arm(arm: &mut ArmRun) -> Result<bool> {
    let log_path = arm.dir.join("worker.log");
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("cannot create {}", log_path.display()))?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("worker")
        .arg(&arm.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(log))
        .spawn()
        .context("cannot start an lmhost worker process")?;
    let view = ArmView::new(&arm.label);
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
        view.show(&Event::Stopped {
            status: Status::Failed,
            message,
        });
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
        let opt =
            |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<14} {:<10} {:>9} {:>8} {:>15} {:>7} {:>7}  {}",
            a.label,
            a.record.status.as_str(),
            opt(r.val_loss, 4),
            opt(r.val_accuracy, 4),
            format!(
                "{}/{}",
                human(r.params_train as f64),
                human(r.params_prod as f64)
            ),
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
            eprintln!(
                "error: {} arm ({}): {err}",
                a.label,
                a.record.status.as_str()
            );
        }
    }
}
