//! Hugging Face GPT-2 folders (`GPT2LMHeadModel`) and the gpt2 arch's layout.
//!
//! The two layouts share names (the baseline descends from nanoGPT's GPT-2); they differ in
//! three things: Hugging Face keeps `c_attn`, `c_proj` and `c_fc` as `Conv1D`, whose weight is
//! (in, out) where ours is (out, in); its position table has `n_positions` rows where ours has
//! `context_length`; and a tied head has no `lm_head.weight` of its own.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use lmhost_kit::candle::Tensor;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{ExportSpec, HfFolder};

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
    /// Parses `path`'s text (a `config.json` of model_type gpt2).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let config: Self = serde_json::from_str(text)
            .with_context(|| format!("{} is not a GPT-2 config.json", path.display()))?;
        if !config.scale_attn_weights || config.scale_attn_by_inverse_layer_idx {
            bail!("{}: attention scaled other than by 1/√D has no baseline equivalent", path.display());
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
            ("arch".into(), "gpt2".into()),
            ("n_layer".into(), self.n_layer.into()),
            ("mlp_width".into(), self.n_inner.unwrap_or(0).into()),
            ("norm_eps".into(), self.layer_norm_epsilon.into()),
            ("n_embd".into(), self.n_embd.into()),
            ("n_head".into(), self.n_head.into()),
            ("gelu".into(), gelu.into()),
            ("tied_head".into(), self.tie_word_embeddings.into()),
            ("head_bias".into(), false.into()),
        ]))
    }
}

impl HfGpt2Config {
    /// The dropout rates the folder sets (GPT-2's config.json says 0.1); lmhost has none.
    pub fn dropout(&self) -> Vec<(&'static str, f64)> {
        let rates = [
            ("resid_pdrop", self.resid_pdrop),
            ("embd_pdrop", self.embd_pdrop),
            ("attn_pdrop", self.attn_pdrop),
        ];
        rates.into_iter().filter(|(_, p)| *p > 0.0).collect()
    }
}

/// The Conv1D weights, stored transposed.
fn is_conv1d(name: &str) -> bool {
    [".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight"]
        .iter()
        .any(|s| name.ends_with(s))
}

/// The folder's weights (`tensors`, as `model.safetensors` holds them) under the baseline's
/// names and shapes, for a model of `context_length` positions.
pub fn baseline_weights(
    config: &HfGpt2Config,
    tensors: HashMap<String, Tensor>,
    context_length: usize,
) -> Result<Vec<(String, Tensor)>> {
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

/// `weights` in the baseline's gpt2 layout as a GPT-2 folder's tensors (Hugging Face names,
/// Conv1D weights transposed) and config.json.
pub fn folder(weights: HashMap<String, Tensor>, spec: &ExportSpec) -> Result<HfFolder> {
    let key = |k: &str| spec.key(k);
    if key("arch").as_str().is_some_and(|arch| arch != "gpt2") {
        bail!("a run of arch={} exports as hf-llama, not hf-gpt2", key("arch"));
    }
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
        "n_inner": key("mlp_width").as_u64().filter(|&w| w != 0),
        "activation_function": activation,
        "layer_norm_epsilon": key("norm_eps").as_f64().unwrap_or(1e-5),
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
    Ok(HfFolder { tensors, config })
}
