//! `lmhost logits`: a model's logits for given token ids, written as safetensors: the way to
//! check lmhost against another implementation (llm.c-style golden tests), for a trained run or
//! a Hugging Face GPT-2 or Llama folder loaded into the built-in baseline.

use std::path::{Path, PathBuf};

use abi_stable::std_types::RSlice;
use anyhow::{bail, Context, Result};
use lmhost_kit::candle::{DType, Device, Tensor};
use plugin_api::{ModelBox, RunSpec, TokenBatch};

use crate::hf::HfModel;
use crate::plugin::Plugin;
use crate::restore::Trained;
use crate::run_store::write_atomic;

#[derive(clap::Args)]
pub struct LogitsArgs {
    /// A run folder, or hf:DIR for a Hugging Face GPT-2 or Llama folder.
    model: String,
    /// A safetensors file with an integer tensor `ids` of shape (rows, tokens).
    #[arg(long)]
    ids: PathBuf,
    /// Where the `logits` tensor (rows, tokens, vocab) goes.
    #[arg(long)]
    out: PathBuf,
}

pub fn logits_command(args: &LogitsArgs) -> Result<bool> {
    let (ids, rows, cols) = read_ids(&args.ids)?;
    let (mut model, vocab, context) = match args.model.strip_prefix("hf:") {
        Some(dir) => hf_baseline(Path::new(dir))?,
        None => {
            let run = Trained::open(Path::new(&args.model))?;
            let (vocab, context) = (run.spec.vocab_size as usize, run.spec.context_length as usize);
            (run.model, vocab, context)
        }
    };
    if cols > context {
        bail!("{} has rows of {cols} tokens; the model's context is {context}", args.ids.display());
    }
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        bail!("{} holds id {bad}, outside the model's vocabulary of {vocab}", args.ids.display());
    }
    let batch = TokenBatch { ids: RSlice::from_slice(&ids), rows: rows as u32, cols: cols as u32 };
    let logits = model.logits(batch).into_result().map_err(|e| anyhow::anyhow!("logits {e}"))?.into_vec();
    let logits = Tensor::from_vec(logits, (rows, cols, vocab), &Device::Cpu)?;
    write_atomic(&args.out, &safetensors::tensor::serialize([("logits", logits)], None)?)?;
    println!("wrote {} ({rows} × {cols} × {vocab} logits)", args.out.display());
    Ok(true)
}

/// The `ids` tensor of a safetensors file, as u32 row-major, with its rows and columns.
fn read_ids(path: &Path) -> Result<(Vec<u32>, usize, usize)> {
    let tensors = lmhost_kit::candle::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("{} is not a readable safetensors file", path.display()))?;
    let ids = tensors.get("ids").with_context(|| format!("{} has no tensor named `ids`", path.display()))?;
    let (rows, cols) =
        ids.dims2().with_context(|| format!("`ids` in {} must be (rows, tokens)", path.display()))?;
    let ids: Vec<i64> = ids.to_dtype(DType::I64)?.flatten_all()?.to_vec1()?;
    let ids = ids.into_iter().map(|i| u32::try_from(i).context("negative id")).collect::<Result<_>>()?;
    Ok((ids, rows, cols))
}

/// The built-in baseline in the folder's architecture, loaded with its weights; with its
/// vocabulary size and context length.
pub fn hf_baseline(dir: &Path) -> Result<(ModelBox, usize, usize)> {
    let config = HfModel::read(dir)?;
    let (vocab, context) = (config.vocab_size(), config.positions());
    let spec = RunSpec {
        device: "cpu".into(),
        dtype: "f32".into(),
        seed: 0,
        vocab_size: vocab as u32,
        context_length: context as u32,
    };
    let mut model = Plugin::builtin()
        .create(&spec, &config.model_keys()?)
        .map_err(|e| anyhow::anyhow!("baseline {e}"))?;
    let weights = config.weights_file(dir, context)?;
    model
        .load_weights(RSlice::from_slice(&weights))
        .into_result()
        .map_err(|e| anyhow::anyhow!("{} does not fit the baseline: {e}", dir.display()))?;
    Ok((model, vocab, context))
}
