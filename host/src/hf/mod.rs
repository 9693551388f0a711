//! Hugging Face folders: `GPT2LMHeadModel` ([`gpt2`]) and `LlamaForCausalLM` ([`llama`]) read
//! into the baseline's layout of the matching arch (`init=hf:DIR`, `lmhost logits hf:DIR`) and
//! written from it (`lmhost export --format hf-gpt2 | hf-llama`). Each module owns its mapping
//! of names and shapes; this one reads and writes the folders.

pub mod gpt2;
pub mod llama;

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use lmhost_kit::candle::{Device, Tensor};
use serde_json::{json, Map, Value};

use crate::config::Request;
use crate::run_store::write_atomic;

/// A folder's architecture, from its `config.json`.
pub enum HfModel {
    Gpt2(gpt2::HfGpt2Config),
    Llama(llama::HfLlamaConfig),
}

impl HfModel {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read {}: init=hf:DIR needs a Hugging Face model folder", path.display())
        })?;
        let model_type: Value =
            serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
        match model_type["model_type"].as_str().unwrap_or_default() {
            "gpt2" => Ok(Self::Gpt2(gpt2::HfGpt2Config::parse(&path, &text)?)),
            "llama" => Ok(Self::Llama(llama::HfLlamaConfig::parse(&path, &text)?)),
            other => bail!("{} has model_type `{other}`; gpt2 and llama folders load", path.display()),
        }
    }

    /// The baseline's model keys for this architecture.
    pub fn model_keys(&self) -> Result<Map<String, Value>> {
        match self {
            Self::Gpt2(c) => c.model_keys(),
            Self::Llama(c) => c.model_keys(),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.vocab_size,
            Self::Llama(c) => c.vocab_size,
        }
    }

    /// The longest sequence the folder's model was made for.
    pub fn positions(&self) -> usize {
        match self {
            Self::Gpt2(c) => c.n_positions,
            Self::Llama(c) => c.max_position_embeddings,
        }
    }

    /// `dir/model.safetensors` under the baseline's names and shapes for a model of
    /// `context_length` positions, as the safetensors bytes a model's `load_weights` takes.
    pub fn weights_file(&self, dir: &Path, context_length: usize) -> Result<Vec<u8>> {
        let path = dir.join("model.safetensors");
        if !path.is_file() {
            bail!(
                "{} not found; save the model with `save_pretrained(DIR, safe_serialization=True)`",
                path.display()
            );
        }
        if context_length > self.positions() {
            bail!(
                "context_length={context_length} is longer than {}'s {} positions",
                dir.display(),
                self.positions()
            );
        }
        let tensors = lmhost_kit::candle::safetensors::load(&path, &Device::Cpu)
            .with_context(|| format!("{} is not a readable safetensors file", path.display()))?;
        let tensors = tensors
            .into_iter()
            .map(|(k, v)| Ok((k, v.to_dtype(lmhost_kit::candle::DType::F32)?)))
            .collect::<Result<HashMap<_, _>>>()?;
        let mut weights = match self {
            Self::Gpt2(c) => gpt2::baseline_weights(c, tensors, context_length)?,
            Self::Llama(c) => llama::baseline_weights(c, tensors)?,
        };
        weights.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(safetensors::tensor::serialize(weights, None)?)
    }

    /// A line for the user when the folder's model trained with dropout, which lmhost does not
    /// have (GPT-2's config.json says 0.1).
    pub fn dropout_note(&self, dir: &Path) -> Option<String> {
        let rates = match self {
            Self::Gpt2(c) => c.dropout(),
            Self::Llama(c) => c.dropout(),
        };
        let set: Vec<String> = rates.iter().map(|(k, p)| format!("{k} {p}")).collect();
        (!set.is_empty()).then(|| {
            format!(
                "note: {}'s config has dropout ({}); lmhost trains without dropout",
                dir.display(),
                set.join(", ")
            )
        })
    }
}

/// With `init=hf:DIR` (made absolute by [`Request::new`]), the keys the folder implies: its
/// architecture and its tokenizer. A key the user set to something else is an error, since the
/// weights would not fit.
pub fn implied_keys(request: &Request) -> Result<Vec<(String, String)>> {
    let Some(dir) = request.get("init").and_then(|v| v.strip_prefix("hf:")) else { return Ok(Vec::new()) };
    let dir = Path::new(dir);
    let mut implied: Vec<(String, String)> = HfModel::read(dir)?
        .model_keys()?
        .into_iter()
        .map(|(k, v)| (k, v.as_str().map_or(v.to_string(), str::to_owned)))
        .collect();
    let tokenizer = dir.join("tokenizer.json");
    if tokenizer.is_file() {
        implied.push(("tokenizer".into(), tokenizer.display().to_string()));
    }
    for (key, value) in &implied {
        if let Some(given) = request.get(key).filter(|given| given != value) {
            bail!(
                "{key}={given} conflicts with init=hf:{}, whose {key} is {value}; drop {key}=",
                dir.display()
            );
        }
    }
    Ok(implied)
}

/// The dropout note for an `init=` value, when it names a Hugging Face folder.
pub fn dropout_note(init: &str) -> Option<String> {
    let dir = Path::new(init.strip_prefix("hf:")?);
    HfModel::read(dir).ok()?.dropout_note(dir)
}

/// What an export needs to know of the run.
pub struct ExportSpec<'a> {
    /// The run's model keys (arch, n_layer, n_embd, n_head, …).
    pub model: &'a Map<String, Value>,
    pub vocab_size: usize,
    pub context_length: usize,
    /// The run's tokenizer.json, copied beside the weights.
    pub tokenizer: &'a Path,
}

impl ExportSpec<'_> {
    /// One of the run's model keys (null when the run did not record it).
    pub fn key(&self, name: &str) -> Value {
        self.model.get(name).cloned().unwrap_or(Value::Null)
    }
}

/// A folder's contents before they are written: tensors under Hugging Face's names and its
/// config.json.
pub struct HfFolder {
    pub tensors: Vec<(String, Tensor)>,
    pub config: Value,
}

/// Writes `out/config.json`, `out/model.safetensors` and the tokenizer files.
pub fn write_folder(folder: HfFolder, spec: &ExportSpec, out: &Path) -> Result<()> {
    let HfFolder { mut tensors, config } = folder;
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    // transformers refuses safetensors files without this metadata.
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    write_atomic(&out.join("model.safetensors"), &safetensors::tensor::serialize(tensors, Some(metadata))?)?;
    write_atomic(&out.join("config.json"), serde_json::to_string_pretty(&config)?.as_bytes())?;
    let tokenizer = std::fs::read(spec.tokenizer)
        .with_context(|| format!("cannot read the run's tokenizer {}", spec.tokenizer.display()))?;
    write_atomic(&out.join("tokenizer.json"), &tokenizer)?;
    let tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "model_max_length": spec.context_length,
    });
    write_atomic(
        &out.join("tokenizer_config.json"),
        serde_json::to_string_pretty(&tokenizer_config)?.as_bytes(),
    )?;
    Ok(())
}
