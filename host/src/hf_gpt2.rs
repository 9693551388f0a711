//! Hugging Face GPT-2 folders (`GPT2LMHeadModel`): reading one into the baseline's layout
//! (`init=hf:DIR`, `lmhost logits hf:DIR`) and writing a run's weights as one
//! (`lmhost export --format hf-gpt2`).
//!
//! The two layouts share names (the baseline descends from nanoGPT's GPT-2); they differ in
//! three things: Hugging Face keeps `c_attn`, `c_proj` and `c_fc` as `Conv1D`, whose weight is
//! (in, out) where ours is (out, in); its position table has `n_positions` rows where ours has
//! `context_length`; and a tied head has no `lm_head.weight` of its own.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use lmhost_kit::candle::{Device, Tensor};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::config::Request;
use crate::run_store::write_atomic;

/// The fields of a `config.json` that fix the architecture.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HfGpt2Config {
    #[serde(default)]
    pub model_type: String,
    pub vocab_size: usize,
    pub n_positions: usize,
    pub n_embd: usize,
    pub n_layer: usize,
    pub n_head: usize,
    #[serde(default = "gelu_new")]
    pub activation_function: String,
    #[serde(default = "layer_norm_epsilon")]
    pub layer_norm_epsilon: f64,
    #[serde(default = "yes")]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub n_inner: Option<usize>,
    #[serde(default = "yes")]
    pub scale_attn_weights: bool,
    #[serde(default)]
    pub scale_attn_by_inverse_layer_idx: bool,
    /// Dropout rates (transformers' defaults are 0.1); lmhost trains without dropout.
    #[serde(default = "gpt2_dropout")]
    pub resid_pdrop: f64,
    #[serde(default = "gpt2_dropout")]
    pub embd_pdrop: f64,
    #[serde(default = "gpt2_dropout")]
    pub attn_pdrop: f64,
}

fn gpt2_dropout() -> f64 {
    0.1
}

fn gelu_new() -> String {
    "gelu_new".into()
}
fn layer_norm_epsilon() -> f64 {
    1e-5
}
fn yes() -> bool {
    true
}

impl HfGpt2Config {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("cannot read {}: init=hf:DIR needs a Hugging Face GPT-2 folder", path.display())
        })?;
        let config: Self = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a GPT-2 config.json", path.display()))?;
        if config.model_type != "gpt2" {
            bail!("{} has model_type `{}`; only gpt2 folders load", path.display(), config.model_type);
        }
        if config.n_inner.is_some_and(|n| n != 4 * config.n_embd) {
            bail!("{}: n_inner other than 4 × n_embd has no baseline equivalent", path.display());
        }
        if !config.scale_attn_weights || config.scale_attn_by_inverse_layer_idx {
            bail!("{}: attention scaled other than by 1/√D has no baseline equivalent", path.display());
        }
        if (config.layer_norm_epsilon - 1e-5).abs() > 1e-12 {
            bail!(
                "{}: layer_norm_epsilon {} (the baseline's is 1e-5)",
                path.display(),
                config.layer_norm_epsilon
            );
        }
        Ok(config)
    }

    /// The baseline's model keys for this architecture.
    pub fn model_keys(&self) -> Result<Map<String, Value>> {
        let gelu = match self.activation_function.as_str() {
            "gelu_new" | "gelu_pytorch_tanh" => "tanh",
            "gelu" => "erf",
            other => bail!("activation_function `{other}` has no baseline equivalent (gelu_new or gelu)"),
        };
        Ok(Map::from_iter([
            ("n_layer".into(), self.n_layer.into()),
            ("n_embd".into(), self.n_embd.into()),
            ("n_head".into(), self.n_head.into()),
            ("gelu".into(), gelu.into()),
            ("tied_head".into(), self.tie_word_embeddings.into()),
            ("head_bias".into(), false.into()),
        ]))
    }
}

/// With `init=hf:DIR` (made absolute by [`Request::new`]), the keys the folder implies: its
/// architecture and its tokenizer. A key the user set to something else is an error, since the
/// weights would not fit.
pub fn implied_keys(request: &Request) -> Result<Vec<(String, String)>> {
    let Some(dir) = request.get("init").and_then(|v| v.strip_prefix("hf:")) else { return Ok(Vec::new()) };
    let dir = Path::new(dir);
    let mut implied: Vec<(String, String)> = HfGpt2Config::read(dir)?
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

/// A line for the user when an `init=hf:DIR` folder trains with dropout, which lmhost does not
/// have (GPT-2's config.json says 0.1).
pub fn dropout_note(init: &str) -> Option<String> {
    let dir = Path::new(init.strip_prefix("hf:")?);
    let c = HfGpt2Config::read(dir).ok()?;
    let rates = [("resid_pdrop", c.resid_pdrop), ("embd_pdrop", c.embd_pdrop), ("attn_pdrop", c.attn_pdrop)];
    let set: Vec<String> = rates.iter().filter(|(_, p)| *p > 0.0).map(|(k, p)| format!("{k} {p}")).collect();
    (!set.is_empty()).then(|| {
        format!(
            "note: {}'s config has dropout ({}); lmhost trains without dropout",
            dir.display(),
            set.join(", ")
        )
    })
}

/// The Conv1D weights, stored transposed.
fn is_conv1d(name: &str) -> bool {
    [".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The weights of `dir/model.safetensors` under the baseline's names and shapes, for a model of
/// `context_length` positions.
pub fn read_weights(
    dir: &Path,
    config: &HfGpt2Config,
    context_length: usize,
) -> Result<Vec<(String, Tensor)>> {
    let path = dir.join("model.safetensors");
    if !path.is_file() {
        bail!(
            "{} not found; save the model with `save_pretrained(DIR, safe_serialization=True)`",
            path.display()
        );
    }
    if context_length > config.n_positions {
        bail!(
            "context_length={context_length} is longer than {}'s n_positions ({})",
            dir.display(),
            config.n_positions
        );
    }
    let tensors = lmhost_kit::candle::safetensors::load(&path, &Device::Cpu)
        .with_context(|| format!("{} is not a readable safetensors file", path.display()))?;
    let mut out = Vec::new();
    for (name, tensor) in tensors {
        // The causal-mask buffers of older transformers versions are not weights.
        if name.ends_with(".attn.bias") || name.ends_with(".attn.masked_bias") {
            continue;
        }
        if name == "lm_head.weight" && config.tie_word_embeddings {
            continue;
        }
        let ours = if name.starts_with("transformer.") || name.starts_with("lm_head.") {
            name
        } else {
            format!("transformer.{name}")
        };
        let tensor = tensor.to_dtype(lmhost_kit::candle::DType::F32)?;
        let tensor = if is_conv1d(&ours) {
            tensor.t()?.contiguous()?
        } else if ours == "transformer.wpe.weight" {
            tensor.narrow(0, 0, context_length)?
        } else {
            tensor
        };
        out.push((ours, tensor));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// `read_weights` as the safetensors bytes a model's `load_weights` takes.
pub fn weights_file(dir: &Path, config: &HfGpt2Config, context_length: usize) -> Result<Vec<u8>> {
    Ok(safetensors::tensor::serialize(read_weights(dir, config, context_length)?, None)?)
}

/// What an export needs to know of the run.
pub struct ExportSpec<'a> {
    /// The run's model keys (n_layer, n_embd, n_head, gelu, tied_head, head_bias).
    pub model: &'a Map<String, Value>,
    pub vocab_size: usize,
    pub context_length: usize,
    /// The run's tokenizer.json, copied beside the weights.
    pub tokenizer: &'a Path,
}

/// Writes `out/config.json`, `out/model.safetensors` (Hugging Face names, Conv1D weights
/// transposed) and the tokenizer files from `weights` in the baseline's layout.
pub fn export(weights: HashMap<String, Tensor>, spec: &ExportSpec, out: &Path) -> Result<()> {
    let key = |k: &str| spec.model.get(k).cloned().unwrap_or(Value::Null);
    if key("head_bias") != Value::Bool(false) {
        bail!("GPT-2's head has no bias: train with head_bias=false (with gelu=tanh tied_head=true for GPT-2 exactly) to export as hf-gpt2");
    }
    let activation = match key("gelu").as_str() {
        Some("tanh") => "gelu_new",
        _ => "gelu",
    };
    let tied = key("tied_head") == Value::Bool(true);
    let mut tensors = Vec::new();
    for (name, tensor) in weights {
        let tensor = if is_conv1d(&name) { tensor.t()?.contiguous()? } else { tensor };
        tensors.push((name, tensor));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
    if let Some(odd) = names
        .iter()
        .find(|n| !(n.starts_with("transformer.") || **n == "lm_head.weight") || n.contains("ln_emb"))
    {
        bail!("`{odd}` has no place in GPT-2; only the baseline's layout exports as hf-gpt2");
    }
    let config = json!({
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": spec.vocab_size,
        "n_positions": spec.context_length,
        "n_ctx": spec.context_length,
        "n_embd": key("n_embd"),
        "n_layer": key("n_layer"),
        "n_head": key("n_head"),
        "n_inner": null,
        "activation_function": activation,
        "layer_norm_epsilon": 1e-5,
        "initializer_range": 0.02,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "scale_attn_weights": true,
        "tie_word_embeddings": tied,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    });
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
