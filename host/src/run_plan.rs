//! What `lmhost run` decides before anything trains: both arms' configs resolved (the
//! experiment's through a probe process, the baseline's here), checked to stand on the same
//! footing and on a device they can use, and for each arm what to do: reuse a finished twin,
//! resume an interrupted one, or train a new run. A dry run prints the decisions and does
//! nothing else; nothing here writes.

use std::path::PathBuf;

use anyhow::{bail, Result};
use lmhost_kit::config::Knobs;

use crate::config::{resolve_arm, unknown_key_error, ArmConfig, Request, RunConfig};
use crate::plan::PlanRecord;
use crate::plugin::{Plugin, PluginDescription, PluginSource};
use crate::run_store::{
    self, Arm, DataRecord, Derived, HostRecord, PluginRecord, RunRecord, RunStore, Status,
};
use crate::worker::{probe, Probed};

/// What `lmhost run` was asked to do.
pub struct RunPlan {
    pub source: PluginSource,
    pub request: Request,
    /// Where new run folders go.
    pub runs_dir: PathBuf,
    /// Where finished twins are looked for: this folder and the sweep folders in it (a sweep's
    /// baselines serve every sweep of the same runs folder).
    pub runs_root: PathBuf,
    pub cache_dir: PathBuf,
    /// Train the baseline even when a finished run with the same config exists (one trained
    /// by the same command still serves).
    pub retrain_baseline: bool,
    /// Train only the experiment.
    pub no_baseline: bool,
    /// Skip every arm (not only the baseline) whose finished twin exists: how a sweep started
    /// again carries on.
    pub reuse_finished: bool,
    /// Resume an arm's interrupted twin instead of training it anew: how a requeued Slurm task
    /// carries on.
    pub resume_interrupted: bool,
    /// Print what would train and what is already finished; write and train nothing.
    pub dry_run: bool,
    /// One point of a sweep: the sweep compares across seeds at its end.
    pub sweep: bool,
    /// Write the report at the end.
    pub report: bool,
}

/// One arm with its resolved config, before its run folder exists.
pub struct PlannedArm {
    pub arm: Arm,
    pub label: String,
    pub description: PluginDescription,
    pub source: PluginSource,
    pub request: Request,
    pub config: ArmConfig,
}

/// What to do with an arm.
pub enum Decision {
    /// A finished run with the same fingerprint stands in for it.
    Reuse { dir: PathBuf, record: RunRecord },
    /// An interrupted run with the same fingerprint continues.
    Resume { dir: PathBuf, record: RunRecord },
    /// A new run folder, with this record.
    Train(RunRecord),
}

/// Both arms' configs: the experiment's through a probe process, the baseline's in-process.
/// An override is an error only when no arm declares it; the arms must share data and budget.
pub fn resolve_arms(plan: &RunPlan) -> Result<Vec<PlannedArm>> {
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
        "test_fraction",
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

/// Refuses a device this build or this machine does not have, before anything is written.
/// Refuses a device this build, this machine or a plugin does not have, before anything is
/// written.
pub fn check_device(device: &str, arms: &[PlannedArm]) -> Result<()> {
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

/// Each arm's decision and record (the record a new run would be written with, with its
/// fingerprint). Nothing is written.
pub fn decide(
    plan: &RunPlan,
    planned: &[PlannedArm],
    data: &DataRecord,
    stages: Option<&PlanRecord>,
    derived: &Derived,
) -> Result<Vec<Decision>> {
    let store = RunStore::new(&plan.runs_root);
    let comparing = planned.len() > 1;
    planned
        .iter()
        .map(|p| {
            let mut record = new_record(p, data, derived)?;
            record.plan = stages.cloned();
            record.fingerprint = record.compute_fingerprint();
            let baseline = p.arm == Arm::Baseline && comparing;
            let twins = store.twins(&record.fingerprint);
            let finished = twins.iter().rev().find(|(_, r)| r.status == Status::Finished).cloned();
            // --retrain-baseline: only a baseline this same command trained serves.
            let reusable = |dir: &std::path::Path| match baseline && plan.retrain_baseline {
                true => RunStore::created_by_this_command(dir),
                false => plan.reuse_finished || baseline,
            };
            if let Some((dir, record)) = finished.filter(|(dir, _)| reusable(dir)) {
                return Ok(Decision::Reuse { dir, record });
            }
            let interrupted = twins.into_iter().rev().find(|(_, r)| r.status == Status::Interrupted);
            match interrupted.filter(|_| plan.resume_interrupted) {
                Some((dir, record)) => Ok(Decision::Resume { dir, record }),
                None => Ok(Decision::Train(record)),
            }
        })
        .collect()
}

/// The dry run's report: each arm's overrides and what would happen to it.
pub fn print_dry_run(planned: &[PlannedArm], decisions: &[Decision]) {
    for (p, d) in planned.iter().zip(decisions) {
        let overrides: Vec<String> =
            p.request.overrides.iter().map(|o| format!("{}={}", o.key, o.value)).collect();
        let record = match d {
            Decision::Reuse { record, .. } | Decision::Resume { record, .. } | Decision::Train(record) => {
                record
            }
        };
        let variant = record.plugin.variant.as_deref().map(|v| format!(" variant={v}")).unwrap_or_default();
        let what = match d {
            Decision::Reuse { dir, .. } => format!("finished: {}", dir.display()),
            Decision::Resume { dir, .. } => format!("interrupted, would resume: {}", dir.display()),
            Decision::Train(_) => "to train".to_owned(),
        };
        println!("dry-run arm:{}{variant} {} ({what})", p.label, overrides.join(" "));
    }
}

/// The record of a new run of `p`.
fn new_record(p: &PlannedArm, data: &DataRecord, derived: &Derived) -> Result<RunRecord> {
    let (description, source, request, arm) = (&p.description, &p.source, &p.request, p.arm);
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
        config: p.config.clone(),
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
