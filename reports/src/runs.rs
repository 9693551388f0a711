//! A run as a report sees it: the parts of `run.json` a comparison needs and the rows of
//! `stats.arrows`, with what was wrong with them said plainly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::stats::{read_stats, Split, Stats, StatsError};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{0} is not a run folder (it has no run.json); pass folders under runs/")]
    NotARun(String),
    #[error("{path}/run.json is unreadable ({reason}); the run folder is damaged")]
    BadRecord { path: String, reason: String },
    #[error("{0} has no stats yet (empty run): it never logged a step; leave it out")]
    EmptyRun(String),
    #[error(transparent)]
    Stats(#[from] StatsError),
    #[error("{0}")]
    Incomparable(String),
    #[error("{0}")]
    Usage(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

/// Every knob of a `run.json`, host and model, by name.
pub fn config_of(record: &Value) -> BTreeMap<String, Value> {
    ["run", "model"]
        .iter()
        .filter_map(|part| record["config"][part].as_object())
        .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect()
}

/// One run folder, read.
#[derive(Debug, Clone)]
pub struct Run {
    pub dir: PathBuf,
    pub id: String,
    /// `baseline` or `experiment`.
    pub arm: String,
    pub plugin: String,
    pub variant: Option<String>,
    /// `finished`, `running`, `diverged`, `failed`, `interrupted`, `pending`.
    pub status: String,
    pub seed: u64,
    /// Every knob, host and model, by name.
    pub config: BTreeMap<String, Value>,
    pub tokenizer: String,
    /// What decides the tokenizer's ids (newer runs record it; see `datasets::tokenizer_content`).
    pub tokenizer_content: Option<String>,
    pub val_set: String,
    pub params_train: Option<u64>,
    pub params_prod: Option<u64>,
    /// Training FLOPs per token, as the model counted its matrix products.
    pub flops_per_token: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub wall_s: Option<f64>,
    pub stats: Stats,
    /// Things a reader of the report must know (torn stats, still running).
    pub notes: Vec<String>,
}

impl Run {
    pub fn load(dir: &Path) -> Result<Self, ReportError> {
        let shown = dir.display().to_string();
        let text =
            std::fs::read_to_string(dir.join("run.json")).map_err(|_| ReportError::NotARun(shown.clone()))?;
        let record: Value = serde_json::from_str(&text)
            .map_err(|e| ReportError::BadRecord { path: shown.clone(), reason: e.to_string() })?;
        let bad = |what: &str| ReportError::BadRecord { path: shown.clone(), reason: format!("no {what}") };
        let str_at = |v: &Value| v.as_str().map(str::to_owned);
        let config = config_of(&record);
        let stats_path = dir.join("stats.arrows");
        if !stats_path.exists() {
            return Err(ReportError::EmptyRun(shown));
        }
        let stats = read_stats(&stats_path)?;
        if stats.rows.is_empty() {
            return Err(ReportError::EmptyRun(shown));
        }
        let status = str_at(&record["status"]).ok_or_else(|| bad("status"))?;
        let mut notes = Vec::new();
        if let Some(torn) = &stats.torn {
            notes.push(format!("stats.arrows is torn ({torn}); the rows before the tear are used"));
        }
        if status == "running" || status == "pending" {
            let last = stats.rows.iter().map(|r| r.step).max().unwrap_or(0);
            notes.push(format!("still running: {last} steps so far"));
        }
        let result = &record["result"];
        Ok(Self {
            id: str_at(&record["id"]).ok_or_else(|| bad("id"))?,
            arm: str_at(&record["arm"]).ok_or_else(|| bad("arm"))?,
            plugin: str_at(&record["plugin"]["name"]).ok_or_else(|| bad("plugin name"))?,
            variant: str_at(&record["plugin"]["variant"]),
            seed: config.get("seed").and_then(Value::as_u64).ok_or_else(|| bad("seed"))?,
            tokenizer: str_at(&record["data"]["manifest"]["tokenizer_fingerprint"])
                .ok_or_else(|| bad("tokenizer fingerprint"))?,
            tokenizer_content: str_at(&record["data"]["manifest"]["tokenizer_content"]),
            val_set: str_at(&record["data"]["manifest"]["val_fingerprint"])
                .ok_or_else(|| bad("validation set fingerprint"))?,
            params_train: result["params_train"].as_u64(),
            params_prod: result["params_prod"].as_u64(),
            flops_per_token: result["flops_per_token"].as_f64(),
            tokens_per_s: result["tokens_per_s"].as_f64(),
            wall_s: result["wall_s"].as_f64().or_else(|| stats.rows.last().map(|r| r.wall_s)),
            status,
            config,
            stats,
            notes,
            dir: dir.to_owned(),
        })
    }

    /// Whether two runs' tokens came from the same tokenizer: by its content where both runs
    /// recorded it (a re-saved `tokenizer.json` is the same), by its file otherwise.
    pub fn same_tokenizer(&self, other: &Run) -> bool {
        match (&self.tokenizer_content, &other.tokenizer_content) {
            (Some(a), Some(b)) => a == b,
            _ => self.tokenizer == other.tokenizer,
        }
    }

    /// `plugin` or `plugin/variant`.
    pub fn name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}/{v}", self.plugin),
            None => self.plugin.clone(),
        }
    }

    /// The arithmetic the run trained in (`f32`, `tf32`, `bf16-mixed`; runs from before the
    /// `precision` key recorded a `dtype`).
    pub fn precision(&self) -> String {
        let recorded = self.config.get("precision").or_else(|| self.config.get("dtype"));
        recorded.map(crate::compare::short).unwrap_or_else(|| "f32".into())
    }

    /// Training tokens seen by the last logged row.
    pub fn tokens(&self) -> u64 {
        self.stats.rows.iter().map(|r| r.tokens).max().unwrap_or(0)
    }

    /// The last validation loss and accuracy.
    pub fn final_val(&self) -> Option<(f64, f64)> {
        self.final_on(Split::Val)
    }

    /// The last loss and accuracy measured on `split`.
    pub fn final_on(&self, split: Split) -> Option<(f64, f64)> {
        let last = self.stats.split(split).last()?;
        Some((last.loss?, last.accuracy.unwrap_or(f64::NAN)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_without_run_json_is_not_a_run() {
        let dir = tempfile::tempdir().unwrap();
        let err = Run::load(dir.path()).unwrap_err();
        assert!(err.to_string().contains("is not a run folder"), "{err}");
    }
}
