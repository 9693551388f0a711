//! `lmhost export`: a run's weights as safetensors; with `--prod`, a sacrificial experiment's
//! weights folded into the baseline's layout, and with `--verify` the proof that they work: the
//! plain built-in baseline loaded with them gives the trained experiment's logits, with the
//! baseline's parameter count. `--format hf-gpt2` and `hf-llama` write a folder Hugging Face
//! `transformers` loads as `GPT2LMHeadModel` or `LlamaForCausalLM`.

use std::path::{Path, PathBuf};

use abi_stable::std_types::RSlice;
use anyhow::{bail, Context, Result};
use datasets::validation_windows;
use lmhost_kit::candle::Device;
use plugin_api::{ModelBox, TokenBatch};

use crate::restore::{last_checkpoint, Trained};
use crate::run_store::write_atomic;

/// Largest logit difference `--verify` accepts (float rounding of the folded weights is ~1e-6).
const TOLERANCE: f32 = 1e-3;

lmhost_kit::knob_enum! {
    /// What `lmhost export` writes.
    pub enum ExportFormat {
        /// One safetensors file under lmhost's names.
        Safetensors = "safetensors",
        /// A Hugging Face GPT-2 folder: config.json, model.safetensors, tokenizer.
        HfGpt2 = "hf-gpt2",
        /// A Hugging Face Llama folder, from a run of arch=llama.
        HfLlama = "hf-llama",
    }
}

impl clap::ValueEnum for ExportFormat {
    fn value_variants<'a>() -> &'a [Self] {
        &[Self::Safetensors, Self::HfGpt2, Self::HfLlama]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()))
    }
}

#[derive(clap::Args)]
pub struct ExportArgs {
    /// A run folder.
    run: PathBuf,
    /// The prod weights: for a sacrificial experiment, the baseline's layout and names.
    #[arg(long)]
    prod: bool,
    /// Load the prod weights into the built-in baseline and check its logits against the experiment's.
    #[arg(long, requires = "prod")]
    verify: bool,
    /// safetensors; hf-gpt2: a folder `GPT2LMHeadModel.from_pretrained` loads (needs a
    /// model trained with head_bias=false; gelu=tanh tied_head=true make it GPT-2 exactly);
    /// hf-llama: one `LlamaForCausalLM.from_pretrained` loads (a run of arch=llama).
    #[arg(long, default_value = "safetensors")]
    format: ExportFormat,
    /// Where to write [default: RUN/prod.safetensors, RUN/weights.safetensors without --prod,
    /// RUN/hf-gpt2 or RUN/hf-llama with --format hf-gpt2 or hf-llama].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the file at the destination.
    #[arg(long)]
    overwrite: bool,
}

pub fn export_command(args: &ExportArgs) -> Result<bool> {
    if args.format != ExportFormat::Safetensors {
        return export_hf(args);
    }
    let mut run = Trained::open(&args.run)?;
    let name = run.plugin.description.name.clone();
    let (bytes, default_name) = if args.prod {
        if !run.plugin.description.sacrificial {
            bail!(
                "{name} is not sacrificial: its prod model is its training model, not the baseline's layout; `lmhost export {}` writes those weights",
                args.run.display()
            );
        }
        (prod_weights(&mut run.model)?, "prod.safetensors")
    } else {
        (training_weights(&args.run)?, "weights.safetensors")
    };
    let out = args.out.clone().unwrap_or_else(|| args.run.join(default_name));
    if out.exists() && !args.overwrite {
        bail!("{} already exists; pass --overwrite to replace it, or another --out", out.display());
    }
    if args.verify {
        verify(&mut run, &bytes)?;
    }
    write_atomic(&out, &bytes)?;
    println!("wrote {} ({:.1} MB)", out.display(), bytes.len() as f64 / 1e6);
    Ok(true)
}

pub fn prod_weights(model: &mut ModelBox) -> Result<Vec<u8>> {
    Ok(model.export_prod().into_result().map_err(|e| anyhow::anyhow!("export {e}"))?.into_vec())
}

/// The model's weights from the last checkpoint, without the optimiser state.
fn training_weights(run: &Path) -> Result<Vec<u8>> {
    let checkpoint = last_checkpoint(run)?;
    let state = lmhost_kit::candle::safetensors::load(&checkpoint, &Device::Cpu)
        .with_context(|| format!("cannot read {}", checkpoint.display()))?;
    let weights: Vec<(String, _)> =
        state.into_iter().filter_map(|(k, v)| k.strip_prefix("param.").map(|n| (n.to_owned(), v))).collect();
    Ok(safetensors::tensor::serialize(weights, None)?)
}

/// Loads `prod` into the built-in baseline of the run's size and compares logits on
/// validation windows; an error unless they agree and the parameter counts match.
fn verify(run: &mut Trained, prod: &[u8]) -> Result<()> {
    let mut baseline = run.baseline_of_same_size()?;
    baseline
        .load_weights(RSlice::from_slice(prod))
        .into_result()
        .map_err(|e| anyhow::anyhow!("the prod weights do not fit the built-in baseline: {e}"))?;
    let (prod_count, baseline_count) = (run.model.param_counts().prod, baseline.param_counts().train);
    if prod_count != baseline_count {
        bail!("the prod model has {prod_count} parameters, the baseline {baseline_count}");
    }
    let context = run.spec.context_length as usize;
    let rows = 4;
    let windows = validation_windows(&run.data()?.val, rows, context);
    let ids: Vec<u32> = windows.chunks(context + 1).flat_map(|w| w[..context].iter().copied()).collect();
    let logits = |m: &mut ModelBox| -> Result<Vec<f32>> {
        let batch = TokenBatch { ids: RSlice::from_slice(&ids), rows: rows as u32, cols: context as u32 };
        Ok(m.logits(batch).into_result().map_err(|e| anyhow::anyhow!("logits {e}"))?.into_vec())
    };
    let (ours, theirs) = (logits(&mut run.model)?, logits(&mut baseline)?);
    let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!(
        "verify: the built-in baseline loaded with the prod weights gives the experiment's logits to max |Δ| = {worst:.2e} over {} logits ({rows} validation windows); {prod_count} parameters, as the baseline",
        ours.len()
    );
    if worst > TOLERANCE || ours.len() != theirs.len() {
        bail!("verification failed: the prod model's logits differ from the experiment's by {worst:.3e} (tolerance {TOLERANCE:.0e})");
    }
    Ok(())
}

/// `--format hf-gpt2 | hf-llama`: the model's weights in the baseline's layout (a sacrificial
/// experiment's prod weights) as a Hugging Face folder.
fn export_hf(args: &ExportArgs) -> Result<bool> {
    let mut run = Trained::open(&args.run)?;
    let out = args.out.clone().unwrap_or_else(|| args.run.join(args.format.as_str()));
    if out.join("model.safetensors").exists() && !args.overwrite {
        bail!("{} already holds a model; pass --overwrite to replace it, or another --out", out.display());
    }
    let bytes = prod_weights(&mut run.model)?;
    let weights = lmhost_kit::candle::safetensors::load_buffer(&bytes, &Device::Cpu)?;
    let tokenizer = run.tokenizer_path();
    let spec = crate::hf::ExportSpec {
        model: &run.record.config.model,
        vocab_size: run.spec.vocab_size as usize,
        context_length: run.spec.context_length as usize,
        tokenizer: &tokenizer,
    };
    let (folder, class) = match args.format {
        ExportFormat::HfLlama => (crate::hf::llama::folder(weights, &spec)?, "LlamaForCausalLM"),
        _ => (crate::hf::gpt2::folder(weights, &spec)?, "GPT2LMHeadModel"),
    };
    crate::hf::write_folder(folder, &spec, &out)?;
    println!(
        "wrote {} (config.json, model.safetensors, tokenizer.json); load it with {class}.from_pretrained",
        out.display()
    );
    Ok(true)
}
