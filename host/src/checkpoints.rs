//! A run's checkpoints, the one place that names them: `checkpoints/step_NNNNNN.safetensors`
//! (weights and optimiser state after step N; step 0 is the initialisation) and
//! `checkpoints/best.safetensors` (the state at the lowest validation loss). Each is written
//! through a temporary file and a rename; a write that fails removes its temporary file, so a
//! full disk is left with room to record the failure.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::run_store::write_atomic;

pub struct Checkpoints {
    /// `<run>/checkpoints`.
    dir: PathBuf,
}

impl Checkpoints {
    pub fn of(run: &Path) -> Self {
        Self { dir: run.join("checkpoints") }
    }

    /// The checkpoint of `step`, as `run.json` names it (relative to the run folder).
    pub fn name(step: u64) -> String {
        format!("checkpoints/step_{step:06}.safetensors")
    }

    pub fn path(&self, step: u64) -> PathBuf {
        self.dir.join(format!("step_{step:06}.safetensors"))
    }

    pub fn best(&self) -> PathBuf {
        self.dir.join("best.safetensors")
    }

    /// The step of a `step_NNNNNN.safetensors` file.
    pub fn step_of(path: &Path) -> Option<u64> {
        let name = path.file_name()?.to_str()?;
        name.strip_prefix("step_")?.strip_suffix(".safetensors")?.parse().ok()
    }

    /// Every step checkpoint, oldest first (`best.safetensors` aside).
    pub fn steps(&self) -> Vec<(u64, PathBuf)> {
        let mut found: Vec<(u64, PathBuf)> = std::fs::read_dir(&self.dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter_map(|p| Self::step_of(&p).map(|s| (s, p)))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        found
    }

    /// The checkpoint of the highest step.
    pub fn last(&self) -> Result<(u64, PathBuf)> {
        self.steps().pop().with_context(|| {
            format!(
                "{} has no checkpoint (did it finish a step?)",
                self.dir.parent().unwrap_or(&self.dir).display()
            )
        })
    }

    /// The checkpoint of `step` when one is there, else an error listing the steps that are.
    pub fn at(&self, step: u64) -> Result<PathBuf> {
        let path = self.path(step);
        if path.is_file() {
            return Ok(path);
        }
        let have: Vec<String> = self
            .steps()
            .iter()
            .filter_map(|(_, p)| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .collect();
        bail!(
            "{} has no checkpoint at step {step} (it has: {})",
            self.dir.parent().unwrap_or(&self.dir).display(),
            if have.is_empty() { "none".to_owned() } else { have.join(", ") }
        )
    }

    /// Writes `bytes` as the checkpoint of `step`; returns its name for `run.json`.
    pub fn write_step(&self, step: u64, bytes: &[u8]) -> Result<String> {
        self.write(&self.path(step), bytes)?;
        Ok(Self::name(step))
    }

    pub fn write_best(&self, bytes: &[u8]) -> Result<()> {
        self.write(&self.best(), bytes)
    }

    fn write(&self, path: &Path, bytes: &[u8]) -> Result<()> {
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("cannot create {}", self.dir.display()))?;
        write_atomic(path, bytes)
    }

    /// Removes all but the last `keep` step checkpoints.
    pub fn prune(&self, keep: usize) -> Result<()> {
        let steps = self.steps();
        for (_, path) in &steps[..steps.len().saturating_sub(keep)] {
            std::fs::remove_file(path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
        Ok(())
    }
}

/// Whether `path` holds a whole safetensors file (its header reads and every tensor it lists
/// lies inside the file): a checkpoint cut short by a crash or a full disk does not.
pub fn readable(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    safetensors::SafeTensors::deserialize(&bytes)
        .map(|_| ())
        .map_err(|e| anyhow::anyhow!("{} is not a whole checkpoint ({e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_steps_and_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checkpoints::of(dir.path());
        assert_eq!(Checkpoints::name(150), "checkpoints/step_000150.safetensors");
        for step in [0, 10, 20] {
            c.write_step(step, b"x").unwrap();
        }
        c.write_best(b"y").unwrap();
        assert_eq!(c.steps().iter().map(|s| s.0).collect::<Vec<_>>(), [0, 10, 20]);
        assert_eq!(c.last().unwrap().0, 20);
        assert!(c.at(15).unwrap_err().to_string().contains("it has: step_000000.safetensors, step_000010"));
        c.prune(2).unwrap();
        assert_eq!(c.steps().iter().map(|s| s.0).collect::<Vec<_>>(), [10, 20]);
        assert!(c.best().is_file());
        assert!(readable(&c.path(10)).unwrap_err().to_string().contains("not a whole checkpoint"));
    }
}
