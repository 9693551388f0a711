//! `lmhost generate`: sample a continuation from a trained run (through the plugin's KV cache),
//! or from its prod weights loaded into the plain built-in baseline (`--prod`).

use std::path::PathBuf;

use abi_stable::std_types::{RNone, RSlice, RSome};
use anyhow::{bail, Result};
use plugin_api::GenerateSettings;

use crate::export_cmd::prod_weights;
use crate::restore::Trained;

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// A run folder.
    run: PathBuf,
    /// The text to continue.
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value_t = 200)]
    max_tokens: u32,
    /// 0 always picks the most likely token.
    #[arg(long, default_value_t = 0.8)]
    temperature: f64,
    /// Sample only from the k most likely tokens (0: all).
    #[arg(long, default_value_t = 0)]
    top_k: u32,
    /// Sample only from the most likely tokens covering this probability (1: all).
    #[arg(long, default_value_t = 1.0)]
    top_p: f64,
    /// The same seed gives the same text.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Generate with the run's prod weights in the built-in baseline (sacrificial experiments).
    #[arg(long)]
    prod: bool,
    /// Keep going past the end-of-text token.
    #[arg(long)]
    no_stop: bool,
}

pub fn generate_command(args: &GenerateArgs) -> Result<bool> {
    if args.temperature < 0.0 || !(0.0..=1.0).contains(&args.top_p) || args.top_p == 0.0 {
        bail!("--temperature must be ≥ 0 and --top-p in (0, 1]");
    }
    let mut run = Trained::open(&args.run)?;
    let tokenizer = run.tokenizer()?;
    let prompt: Vec<u32> = tokenizer
        .encode(args.prompt.as_str(), false)
        .map_err(|e| anyhow::anyhow!("cannot tokenise the prompt: {e}"))?
        .get_ids()
        .to_vec();
    if prompt.is_empty() {
        bail!("--prompt is empty: give at least one character to continue");
    }
    let mut model = if args.prod {
        if !run.plugin.description.sacrificial {
            bail!(
                "{} is not sacrificial: it has no baseline-layout prod weights; drop --prod",
                run.plugin.description.name
            );
        }
        let weights = prod_weights(&mut run.model)?;
        let mut baseline = run.baseline_of_same_size()?;
        baseline
            .load_weights(RSlice::from_slice(&weights))
            .into_result()
            .map_err(|e| anyhow::anyhow!("the prod weights do not fit the built-in baseline: {e}"))?;
        baseline
    } else {
        run.model
    };
    let settings = GenerateSettings {
        max_tokens: args.max_tokens,
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        seed: args.seed,
        stop_token: match (args.no_stop, tokenizer.token_to_id(datasets::END_OF_TEXT)) {
            (false, Some(id)) => RSome(id),
            _ => RNone,
        },
    };
    let new = model
        .generate(RSlice::from_slice(&prompt), settings)
        .into_result()
        .map_err(|e| anyhow::anyhow!("generate {e}"))?;
    let text = tokenizer.decode(&new, true).map_err(|e| anyhow::anyhow!("cannot decode: {e}"))?;
    println!("{}{text}", args.prompt);
    Ok(true)
}
