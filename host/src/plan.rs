//! Training plans (lmplay's): a run goes through named stages in order, each with its own data
//! mixture, token budget and learning-rate schedule. The run's `dataset` still fixes the
//! tokenizer and the validation set, so a planned run is measured like any other; every stage
//! source is tokenised with that tokenizer.
//!
//! Which stage a step is in (its span in `run.json`), and which window each of its rows reads
//! (`datasets::mixed_batch`), are functions of the step alone: a resumed run continues in the
//! right stage at the right place.
//!
//! ```toml
//! [[stage]]
//! name = "warmup"
//! tokens = 200_000
//! lr = 1e-3
//! schedule = "constant"
//! data = [{ source = "shakespeare" }]
//!
//! [[stage]]
//! name = "mix"
//! tokens = 400_000
//! data = [{ source = "shakespeare", weight = 3 }, { source = "text:poems/", weight = 1 }]
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lmhost_kit::config::{KnobType, Knobs};
use serde::{Deserialize, Serialize};

use crate::config::{RunConfig, Schedule};
use crate::schedule::LrSchedule;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    #[serde(rename = "stage")]
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    /// Training tokens in this stage, rounded up to whole optimiser steps.
    pub tokens: u64,
    /// Where its batches come from; each row picks a source with probability ∝ weight.
    pub data: Vec<StageSource>,
    /// The stage's schedule; what is left out comes from the run's config. Warmup and decay
    /// restart at the start of each stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lr: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr_ratio: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSource {
    /// A dataset spec, as the `dataset` key takes it.
    pub source: String,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

/// A stage placed on the run's steps, as `run.json` records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageSpan {
    pub name: String,
    /// The stage's first optimiser step (1-based) and how many it has.
    pub first_step: u64,
    pub steps: u64,
    /// The token cache of each source, in the order of the plan.
    pub caches: Vec<PathBuf>,
}

/// The plan of a run, in `run.json`: the file as read, and where each stage falls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanRecord {
    pub file: PathBuf,
    pub plan: Plan,
    pub stages: Vec<StageSpan>,
}

impl Plan {
    /// Reads a `.toml` or `.json` plan and checks it.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| {
            format!("cannot read the plan {} (plan=FILE names a TOML or JSON file)", path.display())
        })?;
        let plan: Plan = match path.extension().and_then(|e| e.to_str()) {
            Some("json") => serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{e}")),
            Some("toml") => toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}", e.message())),
            _ => bail!("the plan {} must end in .toml or .json", path.display()),
        }
        .with_context(|| format!("the plan {} is malformed", path.display()))?;
        plan.check().with_context(|| format!("the plan {}", path.display()))?;
        Ok(plan)
    }

    fn check(&self) -> Result<()> {
        if self.stages.is_empty() {
            bail!("has no [[stage]]");
        }
        for (i, s) in self.stages.iter().enumerate() {
            if s.name.is_empty() || self.stages[..i].iter().any(|t| t.name == s.name) {
                bail!("stage {} needs a name of its own", i + 1);
            }
            if s.tokens == 0 || s.data.is_empty() {
                bail!("stage `{}` needs tokens > 0 and at least one data source", s.name);
            }
            if s.data.iter().any(|d| !(d.weight > 0.0 && d.weight.is_finite())) {
                bail!("stage `{}`: every weight must be a positive number", s.name);
            }
            if let Some(kind) = &s.schedule {
                Schedule::from_json(&kind.as_str().into())
                    .map_err(|e| anyhow::anyhow!("stage `{}`: schedule {e}", s.name))?;
            }
        }
        Ok(())
    }

    /// Each stage's place on the steps, with `caches[i]` the token cache of its sources.
    /// The run's steps: each stage's tokens rounded up to whole steps.
    pub fn steps(&self, tokens_per_step: u64) -> u64 {
        self.stages.iter().map(|s| s.tokens.div_ceil(tokens_per_step)).sum()
    }

    pub fn spans(&self, tokens_per_step: u64, caches: Vec<Vec<PathBuf>>) -> Vec<StageSpan> {
        let mut first = 1;
        self.stages
            .iter()
            .zip(caches)
            .map(|(s, caches)| {
                let steps = s.tokens.div_ceil(tokens_per_step);
                let span = StageSpan { name: s.name.clone(), first_step: first, steps, caches };
                first += steps;
                span
            })
            .collect()
    }

    /// Every optimiser step of the plan.
    pub fn total_steps(&self, tokens_per_step: u64) -> u64 {
        self.stages.iter().map(|s| s.tokens.div_ceil(tokens_per_step)).sum()
    }

    /// The learning-rate schedule of `stage`, over its own steps.
    pub fn schedule(&self, stage: usize, run: &RunConfig, steps: u64) -> Result<LrSchedule> {
        let s = &self.stages[stage];
        let mut map = run.to_map();
        map.insert("steps".into(), steps.into());
        let mut set = |key: &str, value: Option<serde_json::Value>| {
            if let Some(v) = value {
                map.insert(key.into(), v);
            }
        };
        set("lr", s.lr.map(Into::into));
        set("schedule", s.schedule.clone().map(Into::into));
        set("warmup", s.warmup.map(Into::into));
        set("min_lr_ratio", s.min_lr_ratio.map(Into::into));
        let config = RunConfig::from_map(&map).map_err(|e| anyhow::anyhow!("stage `{}`: {e}", s.name))?;
        Ok(LrSchedule::new(&config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLAN: &str = r#"
        [[stage]]
        name = "warm"
        tokens = 1000
        lr = 1e-3
        schedule = "constant"
        data = [{ source = "shakespeare" }]

        [[stage]]
        name = "mix"
        tokens = 2048
        data = [{ source = "shakespeare", weight = 3 }, { source = "text:x", weight = 1 }]
    "#;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn stages_fall_on_whole_steps() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::load(&write(dir.path(), "p.toml", PLAN)).unwrap();
        assert_eq!(plan.stages[1].data[0].weight, 3.0);
        assert_eq!(plan.stages[0].data[0].weight, 1.0);
        // 1000 tokens at 256 per step: 4 steps; 2048: 8 steps.
        assert_eq!(plan.total_steps(256), 12);
        let spans = plan.spans(256, vec![vec![], vec![]]);
        assert_eq!((spans[0].first_step, spans[0].steps), (1, 4));
        assert_eq!((spans[1].first_step, spans[1].steps), (5, 8));
        // The same plan as JSON.
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(Plan::load(&write(dir.path(), "p.json", &json)).unwrap(), plan);
    }

    #[test]
    fn each_stage_has_its_own_schedule_filled_from_the_run() {
        let dir = tempfile::tempdir().unwrap();
        let plan = Plan::load(&write(dir.path(), "p.toml", PLAN)).unwrap();
        let run = RunConfig { lr: 5e-4, warmup: 2, ..RunConfig::default() };
        let warm = plan.schedule(0, &run, 4).unwrap();
        assert_eq!((warm.lr(0), warm.lr(3)), (5e-4, 1e-3), "the run's warmup of 2 steps, then constant");
        let mix = plan.schedule(1, &run, 8).unwrap();
        assert!((mix.lr(0) - 2.5e-4).abs() < 1e-12, "warmup restarts: {}", mix.lr(0));
        assert!(mix.lr(7) < 5e-4);
    }

    #[test]
    fn malformed_plans_say_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let err = |text: &str| format!("{:#}", Plan::load(&write(dir.path(), "p.toml", text)).unwrap_err());
        assert!(err("[[stage]]\nname='a'\ntokens=5\n").contains("missing field `data`"));
        assert!(err("[[stage]]\nname='a'\ntokens=5\ndata=[]\n").contains("at least one data source"));
        assert!(err("[[stage]]\nname='a'\ntokens=5\ndata=[{source='x', weight=0}]\n").contains("positive"));
        assert!(
            err("[[stage]]\nname='a'\ntokens=5\nschedule='cosin'\ndata=[{source='x'}]\n").contains("cosine")
        );
        assert!(
            err("[[stage]]\nname='a'\ntokens=5\nlr_typo=1\ndata=[{source='x'}]\n").contains("unknown field")
        );
        let other = Plan::load(&write(dir.path(), "p.yaml", "")).unwrap_err().to_string();
        assert!(other.contains(".toml or .json"), "{other}");
        let missing = Plan::load(&dir.path().join("none.toml")).unwrap_err().to_string();
        assert!(missing.contains("cannot read the plan"), "{missing}");
    }
}
