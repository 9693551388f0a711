//! Hugging Face Llama folders (`LlamaForCausalLM`) and the llama arch's layout.
//!
//! The layouts hold the same matrices under other names; two differ in shape: Hugging Face
//! keeps q, k and v as three (C × C) projections where the arch fuses them into one (3C × C)
//! `c_attn` (q, k, v stacked in that order), and a tied head has no `lm_head.weight` of its own.
//! Both rotate q and k the same way (the rotate-half pairing of dimension i with i + D/2), so
//! no permutation of rows is needed.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use lmhost_kit::candle::Tensor;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::{ExportSpec, HfFolder};

/// The fields of a Llama `config.json` that fix the architecture.
#[derive(Debug, Clone, Deserialize)]
pub struct HfLlamaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default = "rms_norm_eps")]
    pub rms_norm_eps: f64,
    /// transformers < 5 writes `rope_theta`; 5 writes `rope_parameters`.
    #[serde(default)]
    pub rope_theta: Option<f64>,
    #[serde(default)]
    pub rope_parameters: Option<Value>,
    #[serde(default = "silu")]
    pub hidden_act: String,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub attention_dropout: f64,
}

fn rms_norm_eps() -> f64 {
    1e-6
}
fn silu() -> String {
    "silu".into()
}

impl HfLlamaConfig {
    /// Parses `path`'s text (a `config.json` of model_type llama).
    pub fn parse(path: &Path, text: &str) -> Result<Self> {
        let c: Self = serde_json::from_str(text)
            .with_context(|| format!("{} is not a Llama config.json", path.display()))?;
        let where_ = path.display();
        if c.num_key_value_heads.is_some_and(|kv| kv != c.num_attention_heads) {
            bail!("{where_}: grouped-query attention (num_key_value_heads ≠ num_attention_heads) has no baseline equivalent");
        }
        if c.head_dim.is_some_and(|d| d * c.num_attention_heads != c.hidden_size) {
            bail!("{where_}: head_dim × num_attention_heads ≠ hidden_size has no baseline equivalent");
        }
        if c.hidden_act != "silu" {
            bail!("{where_}: hidden_act `{}` (the llama arch's SwiGLU uses silu)", c.hidden_act);
        }
        if c.attention_bias || c.mlp_bias {
            bail!("{where_}: biases on attention or MLP projections have no llama-arch equivalent");
        }
        if let Some(kind) =
            c.rope_parameters.as_ref().and_then(|p| p["rope_type"].as_str()).filter(|k| *k != "default")
        {
            bail!(
                "{where_}: rope_type `{kind}` (only the default rotary embedding has a baseline equivalent)"
            );
        }
        Ok(c)
    }

    pub fn rope_base(&self) -> f64 {
        self.rope_parameters
            .as_ref()
            .and_then(|p| p["rope_theta"].as_f64())
            .or(self.rope_theta)
            .unwrap_or(10_000.0)
    }

    /// The baseline's model keys for this architecture.
    pub fn model_keys(&self) -> Result<Map<String, Value>> {
        Ok(Map::from_iter([
            ("arch".into(), "llama".into()),
            ("n_layer".into(), self.num_hidden_layers.into()),
            ("n_embd".into(), self.hidden_size.into()),
            ("n_head".into(), self.num_attention_heads.into()),
            ("mlp_width".into(), self.intermediate_size.into()),
            ("norm_eps".into(), self.rms_norm_eps.into()),
            ("rope_theta".into(), self.rope_base().into()),
            ("tied_head".into(), self.tie_word_embeddings.into()),
        ]))
    }

    pub fn dropout(&self) -> Vec<(&'static str, f64)> {
        [("attention_dropout", self.attention_dropout)].into_iter().filter(|(_, p)| *p > 0.0).collect()
    }
}

/// Ours → Hugging Face's, for every name but the fused q/k/v projection; `{}` is the layer.
const NAMES: [(&str, &str); 6] = [
    ("ln_1.weight", "input_layernorm.weight"),
    ("attn.c_proj.weight", "self_attn.o_proj.weight"),
    ("ln_2.weight", "post_attention_layernorm.weight"),
    ("mlp.c_gate.weight", "mlp.gate_proj.weight"),
    ("mlp.c_fc.weight", "mlp.up_proj.weight"),
    ("mlp.c_proj.weight", "mlp.down_proj.weight"),
];
const QKV: [&str; 3] = ["self_attn.q_proj.weight", "self_attn.k_proj.weight", "self_attn.v_proj.weight"];
const GLOBAL: [(&str, &str); 3] = [
    ("transformer.wte.weight", "model.embed_tokens.weight"),
    ("transformer.ln_f.weight", "model.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
];

/// Hugging Face's name for one of ours (the fused q/k/v aside).
fn theirs(ours: &str) -> Option<String> {
    if let Some((_, t)) = GLOBAL.iter().find(|(o, _)| *o == ours) {
        return Some((*t).to_owned());
    }
    let rest = ours.strip_prefix("transformer.h.")?;
    let (layer, part) = rest.split_once('.')?;
    let (_, t) = NAMES.iter().find(|(o, _)| *o == part)?;
    Some(format!("model.layers.{layer}.{t}"))
}

/// The folder's tensors under the llama arch's names: q, k and v stacked into `c_attn`.
pub fn baseline_weights(
    config: &HfLlamaConfig,
    mut tensors: HashMap<String, Tensor>,
) -> Result<Vec<(String, Tensor)>> {
    if config.tie_word_embeddings {
        tensors.remove("lm_head.weight");
    }
    let mut out = Vec::new();
    for layer in 0..config.num_hidden_layers {
        let parts = QKV
            .iter()
            .map(|n| {
                let name = format!("model.layers.{layer}.{n}");
                tensors.remove(&name).with_context(|| format!("the folder has no `{name}`"))
            })
            .collect::<Result<Vec<_>>>()?;
        out.push((format!("transformer.h.{layer}.attn.c_attn.weight"), Tensor::cat(&parts, 0)?));
        for (ours, t) in NAMES {
            let name = format!("model.layers.{layer}.{t}");
            let tensor = tensors.remove(&name).with_context(|| format!("the folder has no `{name}`"))?;
            out.push((format!("transformer.h.{layer}.{ours}"), tensor));
        }
    }
    for (ours, t) in GLOBAL {
        if let Some(tensor) = tensors.remove(t) {
            out.push((ours.to_owned(), tensor));
        }
    }
    // Buffers some versions save (the rotary frequencies) are not weights.
    tensors.retain(|name, _| !name.ends_with("rotary_emb.inv_freq"));
    if let Some(odd) = tensors.keys().next() {
        bail!("`{odd}` has no place in the llama arch");
    }
    Ok(out)
}

/// `weights` in the llama arch's layout as a Llama folder's tensors and config.json.
pub fn folder(weights: HashMap<String, Tensor>, spec: &ExportSpec) -> Result<HfFolder> {
    let key = |k: &str| spec.key(k);
    if key("arch").as_str() != Some("llama") {
        bail!("hf-llama exports runs of arch=llama; this run's arch is {}", key("arch"));
    }
    let (c, n_head) =
        (key("n_embd").as_u64().unwrap_or(0) as usize, key("n_head").as_u64().unwrap_or(1) as usize);
    let mut tensors = Vec::new();
    let mut width = None;
    for (name, tensor) in weights {
        if let Some(layer) =
            name.strip_prefix("transformer.h.").and_then(|r| r.strip_suffix(".attn.c_attn.weight"))
        {
            for (i, part) in QKV.iter().enumerate() {
                tensors.push((
                    format!("model.layers.{layer}.{part}"),
                    tensor.narrow(0, i * c, c)?.contiguous()?,
                ));
            }
            continue;
        }
        if name.ends_with("mlp.c_fc.weight") {
            width = Some(tensor.dim(0)?);
        }
        let Some(t) = theirs(&name) else {
            bail!("`{name}` has no place in Llama; only the baseline's llama layout exports as hf-llama");
        };
        tensors.push((t, tensor));
    }
    let config = json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": spec.vocab_size,
        "hidden_size": c,
        "intermediate_size": width,
        "num_hidden_layers": key("n_layer"),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_head,
        "head_dim": c / n_head.max(1),
        "max_position_embeddings": spec.context_length,
        "rms_norm_eps": key("norm_eps").as_f64().unwrap_or(1e-5),
        "rope_theta": key("rope_theta").as_f64().unwrap_or(10_000.0),
        "rope_parameters": {"rope_theta": key("rope_theta").as_f64().unwrap_or(10_000.0), "rope_type": "default"},
        "hidden_act": "silu",
        "attention_bias": false,
        "mlp_bias": false,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": key("tied_head") == Value::Bool(true),
        "bos_token_id": 0,
        "eos_token_id": 0,
        "torch_dtype": "float32",
    });
    Ok(HfFolder { tensors, config })
}
