//! A trained run brought back: its plugin, its model built from the recorded config and loaded
//! from its last checkpoint, its data and its tokenizer. `lmhost export` and `lmhost generate`
//! start here.

use std::path::{Path, PathBuf};

use abi_stable::std_types::RSlice;
use anyhow::{bail, Context, Result};
use datasets::{PreparedData, Tokenizer};
use plugin_api::{ModelBox, RunSpec};
use serde_json::{Map, Value};

use crate::plugin::{Plugin, PluginSource};
use crate::run_store::{self, RunRecord};

pub struct Trained {
    pub dir: PathBuf,
    pub record: RunRecord,
    pub plugin: Plugin,
    pub model: ModelBox,
    pub spec: RunSpec,
}

impl Trained {
    pub fn open(dir: &Path) -> Result<Self> {
        let record = run_store::read_record(dir)?;
        if let (PluginSource::Library { path }, Some(expected)) =
            (&record.plugin.source, &record.plugin.sha256)
        {
            if !path.is_file() {
                bail!("{} was trained with {}, which is gone; rebuild it with `cargo build --release --workspace`", dir.display(), path.display());
            }
            if &run_store::sha256_file(path)? != expected {
                bail!(
                    "{} changed since {} was trained (its sha256 differs); the checkpoint may not fit it",
                    path.display(),
                    dir.display()
                );
            }
        }
        let plugin = Plugin::open(&record.plugin.source)?;
        let config = record.config.run_config()?;
        let spec = config.run_spec(record.derived.vocab_size);
        let mut model = plugin
            .create(&spec, &record.config.model)
            .map_err(|e| anyhow::anyhow!("{} {e}", plugin.description.name))?;
        let checkpoint = last_checkpoint(dir)?;
        let state =
            std::fs::read(&checkpoint).with_context(|| format!("cannot read {}", checkpoint.display()))?;
        model.load_state(RSlice::from_slice(&state)).into_result().map_err(|e| {
            anyhow::anyhow!(
                "{} is not a checkpoint of this run ({e}); it may be corrupt",
                checkpoint.display()
            )
        })?;
        Ok(Self { dir: dir.to_owned(), record, plugin, model, spec })
    }

    /// The built-in baseline of the same size (the run's model-size and optimiser keys), for
    /// prod weights.
    pub fn baseline_of_same_size(&self) -> Result<ModelBox> {
        let baseline = Plugin::builtin();
        let keys: Map<String, Value> = self
            .record
            .config
            .model
            .iter()
            .filter(|(k, _)| baseline.description.fields.iter().any(|f| &f.name == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        baseline.create(&self.spec, &keys).map_err(|e| anyhow::anyhow!("baseline {e}"))
    }

    /// The run's own copy of its tokenizer, or the data cache's.
    pub fn tokenizer_path(&self) -> PathBuf {
        let own = self.dir.join("tokenizer.json");
        if own.is_file() {
            own
        } else {
            self.record.data.cache_dir.join("tokenizer.json")
        }
    }

    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let path = self.tokenizer_path();
        Tokenizer::from_file(&path)
            .map_err(|e| anyhow::anyhow!("cannot read the run's tokenizer {}: {e}", path.display()))
    }

    /// The run's data (rebuilt in its cache if the cache was cleared).
    pub fn data(&self) -> Result<PreparedData> {
        if let Ok(data) = PreparedData::load(&self.record.data.cache_dir) {
            return Ok(data);
        }
        let root = self
            .record
            .data
            .cache_dir
            .parent()
            .and_then(Path::parent)
            .context("the run's cache folder has no parent")?;
        Ok(PreparedData::prepare(&self.record.data.manifest.settings, root)?)
    }
}

/// The checkpoint of the highest step.
pub fn last_checkpoint(dir: &Path) -> Result<PathBuf> {
    Ok(crate::checkpoints::Checkpoints::of(dir).last()?.1)
}
