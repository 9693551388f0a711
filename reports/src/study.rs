//! Studies: the folder `lmhost tune` or `lmhost ladder` trains its runs into holds `study.json`,
//! which says what the study is and names its runs (some may live in other folders: a finished
//! twin is reused wherever it is). `lmhost compare` on such a folder writes the study's report.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::report::ReportFiles;
use crate::runs::{ReportError, Run};

/// The manifest's file name in a study folder.
pub const MANIFEST: &str = "study.json";

/// What a study asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StudyKind {
    /// Each arm's best value of `key` by mean validation loss, compared best against best on
    /// the test split.
    Tune { key: String },
    /// Both arms at growing sizes, tokens ∝ parameters: a scaling law per arm.
    Ladder { sizes: Vec<LadderSize>, tokens_per_param: f64, lr_rule: String },
}

/// One rung of a ladder: the model's shape and what it trains for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LadderSize {
    pub n_layer: u64,
    pub n_embd: u64,
    pub n_head: u64,
    /// The baseline's parameters at this size (its token budget follows from them).
    pub params: u64,
    pub steps: u64,
    pub lr: f64,
}

impl LadderSize {
    /// `4×256`: depth × width.
    pub fn name(&self) -> String {
        format!("{}×{}", self.n_layer, self.n_embd)
    }

    /// Whether `run` was trained at this size.
    pub fn holds(&self, run: &Run) -> bool {
        let key = |k: &str| run.config.get(k).and_then(serde_json::Value::as_u64);
        key("n_layer") == Some(self.n_layer) && key("n_embd") == Some(self.n_embd)
    }
}

/// `study.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StudyManifest {
    /// The study folder's name (`tune-value_norm-lr-…`).
    pub name: String,
    #[serde(flatten)]
    pub kind: StudyKind,
    /// The command that made the study; run again, it trains only what is missing.
    pub command: String,
    /// Every run folder of the study, both arms.
    pub runs: Vec<PathBuf>,
}

/// Whether `dir` is a study folder.
pub fn is_study(dir: &Path) -> bool {
    dir.join(MANIFEST).is_file()
}

impl StudyManifest {
    pub fn read(dir: &Path) -> Result<Self, ReportError> {
        let path = dir.join(MANIFEST);
        let text = std::fs::read_to_string(&path)
            .map_err(|e| ReportError::Io { path: path.display().to_string(), source: e })?;
        serde_json::from_str(&text).map_err(|e| ReportError::BadRecord {
            path: dir.display().to_string(),
            reason: format!("{MANIFEST}: {e}"),
        })
    }

    /// Writes `study.json` into `dir` (through a temporary file: a study read mid-write is whole).
    pub fn write(&self, dir: &Path) -> Result<(), ReportError> {
        let path = dir.join(MANIFEST);
        let io = |e| ReportError::Io { path: path.display().to_string(), source: e };
        let tmp = dir.join(format!(".{MANIFEST}.tmp"));
        std::fs::write(&tmp, serde_json::to_string_pretty(self).expect("a manifest serialises"))
            .map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// The study's runs, read (a run folder that is missing or never logged is an error naming it).
    pub fn load_runs(&self) -> Result<Vec<Run>, ReportError> {
        self.runs.iter().map(|d| Run::load(d)).collect()
    }
}

/// Writes the report of the study in `dir` into `out`. `observing`: the config keys that only
/// observe (runs differing in them alone are replicates).
pub fn write_study_report(dir: &Path, out: &Path, observing: &[String]) -> Result<ReportFiles, ReportError> {
    let manifest = StudyManifest::read(dir)?;
    let runs = manifest.load_runs()?;
    let page = match &manifest.kind {
        StudyKind::Tune { key } => crate::tune::Tune::new(runs, key, observing)?.page(&manifest),
        StudyKind::Ladder { .. } => crate::ladder::Ladder::new(runs, &manifest, observing)?.page(&manifest),
    };
    crate::report::write_page(&page, out)
}

/// The one experiment arm's label among `runs` (`None`: the baseline alone): `plugin/variant`
/// when its runs share a variant, so that two studies of one plugin's variants say which they
/// are; two different experiments in one study are refused.
pub(crate) fn experiment_label(runs: &[Run]) -> Result<Option<String>, ReportError> {
    let experiment: Vec<&Run> = runs.iter().filter(|r| r.arm != "baseline").collect();
    let mut names: Vec<String> = experiment.iter().map(|r| r.plugin.clone()).collect();
    names.sort();
    names.dedup();
    let one_variant = experiment.windows(2).all(|w| w[0].variant == w[1].variant);
    match names.len() {
        0 => Ok(None),
        1 if one_variant => Ok(Some(experiment[0].name())),
        1 => Ok(names.pop()),
        _ => Err(ReportError::Usage(format!(
            "a study compares one experiment with the baseline; these runs hold {}",
            names.join(", ")
        ))),
    }
}
