//! The host's knobs, presets, and the resolution of one arm's config: defaults < preset <
//! variant < `key=value` overrides, each knob declared once (here for the host, in the plugin
//! for the model) and checked before anything runs.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use lmhost_kit::config::{closest, FieldSpec, Knobs};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::plugin::PluginDescription;
pub use crate::request::{Override, Request};
use lmhost_kit::precision::Precision;

/// Keys that were replaced, with what to use instead.
const RETIRED: &[(&str, &str)] = &[(
    "dtype",
    "dtype was replaced by precision=f32|tf32|bf16-mixed; pure bf16 training is gone (weight decay and small updates vanished in it)",
)];

lmhost_kit::knob_enum! {
    /// How the learning rate moves after warmup.
    pub enum Schedule {
        Constant = "constant",
        Cosine = "cosine",
        Linear = "linear",
    }
}

lmhost_kit::knob_enum! {
    /// What warmup is counted in.
    pub enum WarmupUnit {
        Steps = "steps",
        Tokens = "tokens",
    }
}

lmhost_kit::knobs! {
    /// What the host owns: data, budget, schedule, cadence, device. The model's knobs live in
    /// the plugin.
    pub struct RunConfig {
        /// Optimiser steps; the token budget is steps × batch_size × context_length.
        pub steps: u64 = 150,
        /// Sequences per optimiser step.
        pub batch_size: usize = 8,
        /// Sequences per forward/backward; batch_size must divide by it (gradient accumulation).
        pub micro_batch_size: usize = 8,
        /// Tokens per training sequence (T).
        pub context_length: usize = 128,
        /// Peak learning rate.
        pub lr: f64 = 1e-3,
        /// constant, cosine or linear decay after warmup, down to min_lr_ratio × lr.
        pub schedule: Schedule = Schedule::Cosine,
        /// Warmup length, counted in warmup_unit.
        pub warmup: u64 = 15,
        /// steps or tokens (warmup and decay are then counted in tokens seen).
        pub warmup_unit: WarmupUnit = WarmupUnit::Steps,
        /// Learning rate at the end of the decay, as a fraction of lr.
        pub min_lr_ratio: f64 = 0.1,
        /// Evaluate every N steps (and before the first and after the last).
        #[observes = true]
        pub eval_every: u64 = 50,
        /// Validation windows of context_length tokens; the same windows for every run.
        pub eval_windows: usize = 32,
        /// Write a checkpoint every N steps (and one of the initialisation, at step 0); 0 writes
        /// only the final one.
        #[observes = true]
        pub checkpoint_every: u64 = 0,
        /// Keep only the last N step checkpoints (0 keeps them all).
        #[observes = true]
        pub keep_checkpoints: u64 = 0,
        /// Also keep checkpoints/best.safetensors: the state at the lowest validation loss so far.
        #[observes = true]
        pub keep_best: bool = false,
        /// Print progress and flush stats every N steps.
        #[observes = true]
        pub log_every: u64 = 10,
        /// Seeds initialisation and data order; the same for both arms.
        pub seed: u64 = 1,
        /// cpu or cuda:N.
        pub device: String = "cpu".to_owned(),
        /// auto (f32 on the CPU, bf16-mixed on CUDA), f32, tf32 (TF32 matrix products on CUDA)
        /// or bf16-mixed (bf16 forward and backward from f32 master weights and optimiser state).
        pub precision: Precision = Precision::Auto,
        /// Corpus: shakespeare (embedded), text:PATH (file, folder or glob), jsonl:PATH#field,
        /// parquet:PATH#column or arrow:PATH#column (Hugging Face `datasets` files).
        pub dataset: String = "shakespeare".to_owned(),
        /// bpe trains a byte-level BPE on the training documents; a path loads that tokenizer.json.
        pub tokenizer: String = "bpe".to_owned(),
        /// Extra special tokens for a trained tokenizer, separated by spaces (<|endoftext|> is always id 0).
        pub special_tokens: String = String::new(),
        /// Requested BPE vocabulary size, special tokens included.
        pub vocab_size: usize = 4096,
        /// Fraction of the corpus held out for validation, by whole documents.
        pub val_fraction: f64 = 0.1,
        /// Fixes which documents are held out.
        pub split_seed: u64 = 0,
        /// Fraction held out as a test split, by whole documents, after the validation split (0: none):
        /// evaluated once, at the end of the run (tune and ladder select on val and report on test).
        pub test_fraction: f64 = 0.0,
        /// A training plan (TOML or JSON): stages of data mixtures, token budgets and schedules.
        /// The number of steps then follows from the plan; dataset still fixes tokenizer and validation set.
        pub plan: String = String::new(),
        /// Start from weights instead of the seeded initialisation: hf:DIR, a Hugging Face GPT-2 or
        /// Llama folder (its architecture and tokenizer become the run's), or a safetensors file under
        /// the model's own parameter names (`lmhost export`).
        pub init: String = String::new(),
    }
}

impl RunConfig {
    pub fn check(&self) -> Result<()> {
        if self.steps == 0 || self.batch_size == 0 || self.micro_batch_size == 0 || self.context_length < 2 {
            bail!("steps, batch_size and micro_batch_size must be positive and context_length at least 2");
        }
        if !self.batch_size.is_multiple_of(self.micro_batch_size) {
            bail!(
                "batch_size ({}) must divide by micro_batch_size ({})",
                self.batch_size,
                self.micro_batch_size
            );
        }
        if self.eval_every == 0 || self.log_every == 0 || self.eval_windows == 0 {
            bail!("eval_every, log_every and eval_windows must be positive");
        }
        if !(0.0..1.0).contains(&self.val_fraction) || self.val_fraction == 0.0 {
            bail!("val_fraction must be in (0, 1)");
        }
        if !(0.0..1.0).contains(&self.test_fraction) || self.val_fraction + self.test_fraction >= 1.0 {
            bail!("test_fraction must be in [0, 1), and val_fraction + test_fraction below 1");
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) || self.lr <= 0.0 {
            bail!("lr must be positive and min_lr_ratio in [0, 1]");
        }
        Ok(())
    }

    /// Micro-batches per optimiser step.
    pub fn accumulation(&self) -> usize {
        self.batch_size / self.micro_batch_size
    }

    pub fn tokens_per_step(&self) -> u64 {
        (self.batch_size * self.context_length) as u64
    }

    /// What a plugin is told when a model is created for this config.
    pub fn run_spec(&self, vocab_size: usize) -> plugin_api::RunSpec {
        plugin_api::RunSpec {
            device: self.device.as_str().into(),
            dtype: self.precision.resolve(&self.device).as_str().into(),
            seed: self.seed,
            vocab_size: vocab_size as u32,
            context_length: self.context_length as u32,
        }
    }

    pub fn data_settings(&self) -> datasets::DataSettings {
        datasets::DataSettings {
            dataset: self.dataset.clone(),
            vocab_size: self.vocab_size,
            val_fraction: self.val_fraction,
            split_seed: self.split_seed,
            test_fraction: self.test_fraction,
            tokenizer: self.tokenizer.clone(),
            special_tokens: self.special_tokens.clone(),
        }
    }
}

/// A named starting point; a key a plugin does not declare is skipped for that plugin.
pub struct Preset {
    pub name: &'static str,
    pub about: &'static str,
    /// A preset whose settings come first (this one's override them).
    pub extends: Option<&'static str>,
    pub settings: &'static [(&'static str, &'static str)],
}

pub const PRESETS: &[Preset] = &[
    Preset {
        name: "tiny",
        about: "tests, demo and benchmark: 4 layers, width 256, 4 heads, context 128, vocab 4096, batch 8",
        extends: None,
        settings: &[("n_layer", "4"), ("n_embd", "256"), ("n_head", "4"), ("context_length", "128"), ("vocab_size", "4096"), ("batch_size", "8"), ("micro_batch_size", "8")],
    },
    Preset {
        name: "small",
        about: "6 layers, width 384, 6 heads, context 256, vocab 8192, batch 8",
        extends: None,
        settings: &[("n_layer", "6"), ("n_embd", "384"), ("n_head", "6"), ("context_length", "256"), ("vocab_size", "8192"), ("batch_size", "8"), ("micro_batch_size", "8")],
    },
    Preset {
        name: "gpt2",
        about: "GPT-2 124M exactly (Hugging Face GPT2LMHeadModel): 12 layers, width 768, 12 heads, context 1024, vocab 50257, tanh GELU, tied head without bias",
        extends: None,
        settings: &[
            ("n_layer", "12"), ("n_embd", "768"), ("n_head", "12"), ("context_length", "1024"), ("vocab_size", "50257"),
            ("gelu", "tanh"), ("tied_head", "true"), ("head_bias", "false"), ("batch_size", "8"), ("micro_batch_size", "4"),
        ],
    },
    Preset {
        name: "gpt2ish",
        about: "lmplay's published setting: 6 layers, width 768, 12 heads, context 1024, batch 50 from micro-batches of 10, Adagrad at a fixed 6e-4, no weight decay",
        extends: None,
        settings: &[
            ("n_layer", "6"), ("n_embd", "768"), ("n_head", "12"), ("context_length", "1024"), ("vocab_size", "50257"),
            ("batch_size", "50"), ("micro_batch_size", "10"), ("optimizer", "adagrad"), ("lr", "6e-4"),
            ("schedule", "constant"), ("warmup", "0"), ("weight_decay", "0"), ("eps", "1e-10"),
        ],
    },
    Preset {
        name: "llama-tiny",
        about: "tiny in the Llama architecture: RoPE, RMSNorm, SwiGLU, no biases",
        extends: Some("tiny"),
        settings: &[("arch", "llama")],
    },
    Preset {
        name: "llama-small",
        about: "small in the Llama architecture: RoPE, RMSNorm, SwiGLU, no biases",
        extends: Some("small"),
        settings: &[("arch", "llama")],
    },
];

/// A preset's settings, those of the preset it extends first.
pub fn preset(name: &str) -> Result<Vec<(&'static str, &'static str)>> {
    let Some(p) = PRESETS.iter().find(|p| p.name == name) else {
        let names: Vec<&str> = PRESETS.iter().map(|p| p.name).collect();
        anyhow::bail!(match closest(name, &names) {
            Some(near) => format!("unknown preset `{name}` (did you mean `{near}`?)"),
            None => format!("unknown preset `{name}`: use one of {}", names.join(", ")),
        })
    };
    let mut settings = p.extends.map(preset).transpose()?.unwrap_or_default();
    settings.extend_from_slice(p.settings);
    Ok(settings)
}

/// One arm's resolved config: the host's part and the model's part (sent to the plugin).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmConfig {
    pub run: Map<String, Value>,
    pub model: Map<String, Value>,
}

impl ArmConfig {
    pub fn run_config(&self) -> Result<RunConfig> {
        RunConfig::from_map(&self.run).map_err(|e| anyhow::anyhow!(e))
    }

    /// Every knob in one sorted map, for display and comparison.
    pub fn flat(&self) -> BTreeMap<String, Value> {
        self.run.iter().chain(&self.model).map(|(k, v)| (k.clone(), v.clone())).collect()
    }

    /// The config without the keys that only observe: what identifies the arm's numbers (its
    /// fingerprint, whether a finished twin can stand in for it).
    pub fn identity(&self) -> ArmConfig {
        let observing = observing_keys();
        let keep = |m: &Map<String, Value>| -> Map<String, Value> {
            m.iter().filter(|(k, _)| !observing.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        ArmConfig { run: keep(&self.run), model: keep(&self.model) }
    }
}

/// The keys declared `#[observes]`, the host's and the kit's: they never change a run's numbers.
pub fn observing_keys() -> Vec<String> {
    RunConfig::fields()
        .into_iter()
        .chain(lmhost_kit::trainer::kit_fields())
        .filter(|f| f.observes)
        .map(|f| f.name)
        .collect()
}

/// Resolves `request` for a plugin, in layers, each over the one before: the defaults, the
/// preset, the variant, the architecture an `init=hf:DIR` folder implies, the user's overrides,
/// and the steps a `plan=` implies. Returns the arm's config (its model part not yet validated
/// by the plugin) and the override keys this plugin does not know.
pub fn resolve_arm(plugin: &PluginDescription, request: &Request) -> Result<(ArmConfig, Vec<String>)> {
    let host_fields = RunConfig::fields();
    let field = |key: &str| host_fields.iter().chain(&plugin.fields).find(|f| f.name == key);
    let mut config = ArmConfig { run: RunConfig::default().to_map(), model: Map::new() };
    // A key neither the host nor the plugin declares is not set (the other arm may declare it).
    let mut set = |key: &str, value: Value| -> bool {
        let part = if host_fields.iter().any(|f| f.name == key) {
            &mut config.run
        } else if plugin.fields.iter().any(|f| f.name == key) {
            &mut config.model
        } else {
            return false;
        };
        part.insert(key.to_owned(), value);
        true
    };
    let parse = |key: &str, raw: &str| -> Result<Option<Value>> {
        field(key).map(|f| f.parse(raw).map_err(|e| anyhow::anyhow!(e))).transpose()
    };

    for (key, raw) in preset(&request.preset)? {
        if let Some(value) = parse(key, raw)? {
            set(key, value);
        }
    }
    if let Some(name) = &request.variant {
        let variant = plugin.variants.iter().find(|v| &v.name == name).with_context(|| {
            let names: Vec<&str> = plugin.variants.iter().map(|v| v.name.as_str()).collect();
            if names.is_empty() {
                format!("{} has no variants", plugin.name)
            } else {
                format!("{} has no variant `{name}`: it has {}", plugin.name, names.join(", "))
            }
        })?;
        for (key, value) in &variant.overrides {
            if !set(key, value.clone()) {
                bail!("variant `{name}` of {} sets `{key}`, which the plugin does not declare", plugin.name);
            }
        }
    }
    for (key, raw) in crate::hf::implied_keys(request)? {
        if let Some(value) = parse(&key, &raw)? {
            set(&key, value);
        }
    }
    let mut unknown = Vec::new();
    for o in &request.overrides {
        if let Some((_, instead)) = RETIRED.iter().find(|(key, _)| *key == o.key) {
            bail!("{instead}");
        }
        match parse(&o.key, &o.value)? {
            Some(value) => {
                set(&o.key, value);
            }
            None => unknown.push(o.key.clone()),
        }
    }
    let resolved = config.run_config()?;
    resolved.check()?;
    if !resolved.plan.is_empty() {
        if request.get("steps").is_some() {
            bail!("steps follows from the plan's token budgets; leave steps out when plan= is given");
        }
        let steps =
            crate::plan::Plan::load(std::path::Path::new(&resolved.plan))?.steps(resolved.tokens_per_step());
        config.run.insert("steps".into(), Value::from(steps));
    }
    // `auto` becomes what it means on the device, so the run records the arithmetic it used.
    let precision = resolved.precision.resolve(&resolved.device);
    config.run.insert("precision".into(), Value::from(precision.as_str()));
    Ok((config, unknown))
}

/// `config` with host keys (seed, lr, steps, …) changed, checked: what a resume or a branch
/// trains under. A model key is refused, since the run's weights fix the model (`what` names
/// the command, for the error).
pub fn with_host_overrides(config: &ArmConfig, overrides: &[Override], what: &str) -> Result<ArmConfig> {
    let host_fields = RunConfig::fields();
    let mut changed = config.clone();
    for o in overrides {
        let Some(field) = host_fields.iter().find(|f| f.name == o.key) else {
            bail!("{}: {what} keeps the run's model; only host keys (seed, lr, steps, …) can change", o.key);
        };
        changed.run.insert(o.key.clone(), field.parse(&o.value).map_err(|e| anyhow::anyhow!(e))?);
    }
    changed.run_config()?.check()?;
    Ok(changed)
}

/// An error for override keys that no arm declares, with the nearest declared name.
pub fn unknown_key_error(key: &str, fields: &[&FieldSpec]) -> anyhow::Error {
    let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).chain(["variant"]).collect();
    match closest(key, &names) {
        Some(near) => anyhow::anyhow!(
            "unknown config key `{key}` (did you mean `{near}`?); `lmhost describe PLUGIN` lists them all"
        ),
        None => anyhow::anyhow!("unknown config key `{key}`; `lmhost describe PLUGIN` lists them all"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline() -> PluginDescription {
        PluginDescription::builtin()
    }

    fn request(preset: &str, overrides: &[&str]) -> Request {
        Request {
            preset: preset.into(),
            variant: None,
            overrides: overrides.iter().map(|o| o.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn presets_then_overrides_land_in_the_right_half() {
        let (c, unknown) = resolve_arm(&baseline(), &request("small", &["lr=3e-4", "n_layer=2"])).unwrap();
        assert!(unknown.is_empty());
        assert_eq!(c.run["context_length"], Value::from(256));
        assert_eq!(c.run["lr"], Value::from(3e-4));
        assert_eq!(c.model["n_layer"], Value::from(2));
        assert_eq!(c.model["n_embd"], Value::from(384));
        assert!(!c.model.contains_key("lr"));
    }

    #[test]
    fn bad_values_and_unknown_keys_are_reported() {
        let err = resolve_arm(&baseline(), &request("tiny", &["n_layer=two"])).unwrap_err();
        assert_eq!(err.to_string(), "n_layer=two: expected a non-negative integer");
        let err = resolve_arm(&baseline(), &request("tiny", &["schedule=cosin"])).unwrap_err();
        assert!(err.to_string().contains("constant, cosine, linear"), "{err}");
        let (_, unknown) = resolve_arm(&baseline(), &request("tiny", &["n_layres=2"])).unwrap();
        assert_eq!(unknown, vec!["n_layres"]);
        let fields = baseline().fields;
        let all: Vec<&FieldSpec> = fields.iter().collect();
        assert!(unknown_key_error("n_layres", &all).to_string().contains("did you mean `n_layer`"));
        let err =
            resolve_arm(&baseline(), &request("tiny", &["batch_size=6", "micro_batch_size=4"])).unwrap_err();
        assert!(err.to_string().contains("must divide"), "{err}");
        assert!(resolve_arm(&baseline(), &request("tiyn", &[]))
            .unwrap_err()
            .to_string()
            .contains("did you mean `tiny`"));
    }
}
