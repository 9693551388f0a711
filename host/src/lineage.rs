//! A run's life after it first trained: `lmhost resume` continues it from a checkpoint (host keys
//! changed from there on), `lmhost branch` starts children from one. Whatever can refuse — a
//! worker still training the folder, a checkpoint cut short, a key that would change the model,
//! other numerics settings — refuses before the run's folder is touched; only then is what the
//! run will train under written to its `run.json`, and a worker continues it.

use std::path::Path;

use anyhow::{bail, Context, Result};

use crate::checkpoints::{self, Checkpoints};
use crate::config::{with_host_overrides, Override};
use crate::console::print_summary;
use crate::run_store::{self, Arm, BranchRecord, ResumeRecord, RunLock, RunRecord, RunStore, Status};
use crate::worker::{train_arm, ArmRun};

/// `lmhost resume`: continues a run from its last checkpoint (or the one of `from_step`), in a
/// worker as `run` does, then prints its table and writes its report.
///
/// Host-key `overrides` (a lower `lr`, more `steps`, …) apply from the checkpoint on: recorded
/// in `run.json` (`resumes[].overrides`, and the config) and on every stats row trained under
/// them. A finished run can be resumed only to train further (`steps=` above its own).
pub fn resume(dir: &Path, overrides: &[Override], from_step: Option<u64>) -> Result<bool> {
    let record = prepare_resume(dir, overrides, from_step)?;
    let mut arm = ArmRun { label: label(&record), dir: dir.to_owned(), record, reused: false };
    let ok = train_arm(&mut arm, true)?;
    print_summary(std::slice::from_ref(&arm), true);
    crate::orchestrate::report(&[arm.dir.clone()], &arm.record.id, dir.parent().unwrap_or(Path::new(".")));
    Ok(ok)
}

/// Checks that the run at `dir` can resume under `overrides`, then records the resume in its
/// `run.json`: its new config, and from which step it continues. Refuses without writing.
pub fn prepare_resume(dir: &Path, overrides: &[Override], from_step: Option<u64>) -> Result<RunRecord> {
    let mut record = run_store::read_record(dir)?;
    RunLock::check_free(dir)?;
    check_numerics(dir, &record)?;
    let changed = with_host_overrides(&record.config, overrides, "resume")?;
    let longer = changed.run_config()?.steps > record.config.run_config()?.steps;
    if record.status == Status::Finished && !longer {
        bail!(
            "{} already finished; `lmhost resume {} steps=N` with N above its steps trains further, `lmhost branch` starts children",
            dir.display(),
            dir.display()
        );
    }
    let step = resume_step(dir, from_step)?;
    record.config = changed;
    record.fingerprint = record.compute_fingerprint();
    record.resumes.push(ResumeRecord {
        at: run_store::timestamp(),
        from_step: step,
        dropped_rows: 0,
        overrides: overrides.to_vec(),
    });
    run_store::write_record(dir, &record)?;
    Ok(record)
}

/// The step a resume continues from: `from_step`'s checkpoint, or the last one, each checked to
/// be whole (0, a fresh start, when the run has none).
fn resume_step(dir: &Path, from_step: Option<u64>) -> Result<u64> {
    let store = Checkpoints::of(dir);
    let (step, path) = match from_step {
        Some(step) => (step, store.at(step)?),
        None => match store.last() {
            Ok(last) => last,
            Err(_) => return Ok(0),
        },
    };
    if let Err(e) = checkpoints::readable(&path) {
        let whole =
            store.steps().into_iter().rev().find(|(s, p)| *s < step && checkpoints::readable(p).is_ok());
        let hint = match whole {
            Some((s, _)) => {
                format!("`lmhost resume {} --from-step {s}` continues from the last whole one", dir.display())
            }
            None => "it has no whole checkpoint before it".to_owned(),
        };
        bail!("{e}; {hint}");
    }
    Ok(step)
}

/// A run continues only under the numerics it trained under: the environment overrides
/// (`LMHOST_PLAIN_KERNELS`, `LMHOST_SHARDS`) and the matrix-product backend change its numbers.
fn check_numerics(dir: &Path, record: &RunRecord) -> Result<()> {
    let now = lmhost_kit::kernels::numerics_env();
    if now != record.host.numerics_env {
        let show = |m: &std::collections::BTreeMap<String, String>| {
            if m.is_empty() {
                "none".to_owned()
            } else {
                m.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ")
            }
        };
        bail!(
            "{} trained with the numerics settings {}, and this process has {}: continue it under the same ones (they change its numbers)",
            dir.display(),
            show(&record.host.numerics_env),
            show(&now)
        );
    }
    let matmul = lmhost_kit::kernels::matmul_backend();
    if matmul != record.host.matmul {
        bail!(
            "{} trained with the matrix products of {:?}, and this process has {matmul:?}: continue it with the same ({} chooses; they round differently)",
            dir.display(),
            record.host.matmul,
            lmhost_kit::candle::lmhost::matmul::BLAS_ENV
        );
    }
    Ok(())
}

impl RunRecord {
    /// A child of this run (at `parent`) that starts from its checkpoint at `step` with its own
    /// `seed` (its data order) and host keys changed by `overrides`: a new run, pending, with
    /// nothing of the parent's outcome.
    pub fn child_of(&self, parent: &Path, step: u64, seed: u64, overrides: &[Override]) -> Result<RunRecord> {
        let mut config = with_host_overrides(&self.config, overrides, "a branch")?;
        config.run.insert("seed".into(), seed.into());
        config.run_config()?.check()?;
        let mut child = RunRecord {
            id: String::new(),
            status: Status::Pending,
            created_at: run_store::timestamp(),
            config,
            result: None,
            error: None,
            resumes: vec![ResumeRecord {
                at: run_store::timestamp(),
                from_step: step,
                dropped_rows: 0,
                overrides: Vec::new(),
            }],
            branch: Some(BranchRecord { parent: std::path::absolute(parent)?, step }),
            ..self.clone()
        };
        child.fingerprint = child.compute_fingerprint();
        Ok(child)
    }
}

/// `lmhost branch`: children that start from the parent's checkpoint at `step` and differ in
/// data order (seed) or in the host keys overridden; each trains as a resumed run, then one
/// report covers the parent and its children.
pub fn branch(parent: &Path, step: u64, children: u64, overrides: &[Override]) -> Result<bool> {
    let record = run_store::read_record(parent)?;
    let checkpoint = Checkpoints::of(parent)
        .at(step)
        .map_err(|e| anyhow::anyhow!("{e}; train the parent with checkpoint_every=N"))?;
    checkpoints::readable(&checkpoint)?;
    check_numerics(parent, &record)?;
    let first_seed = match overrides.iter().rfind(|o| o.key == "seed") {
        Some(o) => {
            o.value.parse::<u64>().with_context(|| format!("seed={}: expected an integer", o.value))?
        }
        None => record.config.run_config()?.seed + 1,
    };
    let kept: Vec<Override> = overrides.iter().filter(|o| o.key != "seed").cloned().collect();
    let records = (0..children)
        .map(|i| record.child_of(parent, step, first_seed + i, &kept))
        .collect::<Result<Vec<_>>>()?;
    let runs_root = parent.parent().unwrap_or(Path::new("."));
    let store = RunStore::new(runs_root);
    let mut arms = Vec::new();
    for (i, mut child) in records.into_iter().enumerate() {
        let seed = child.config.run_config()?.seed;
        let (id, dir) = store.create_dir(&record.plugin.name, record.plugin.variant.as_deref(), seed)?;
        child.id = id;
        for (from, to) in [
            (checkpoint.clone(), Checkpoints::of(&dir).path(step)),
            (parent.join("stats.arrows"), dir.join("stats.arrows")),
            (parent.join("tokenizer.json"), dir.join("tokenizer.json")),
        ] {
            std::fs::create_dir_all(to.parent().expect("a folder"))?;
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
        all_ok &= train_arm(arm, true)?;
    }
    print_summary(&arms, true);
    let dirs: Vec<_> = std::iter::once(parent.to_owned()).chain(arms.iter().map(|a| a.dir.clone())).collect();
    crate::orchestrate::report(&dirs, &format!("{}-branch-{step}", record.id), runs_root);
    Ok(all_ok)
}

/// How the console names a run's arm.
pub fn label(record: &RunRecord) -> String {
    match record.arm {
        Arm::Baseline => "baseline".to_owned(),
        Arm::Experiment => record.plugin.name.clone(),
    }
}
