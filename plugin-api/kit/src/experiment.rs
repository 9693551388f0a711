//! What a plugin author writes: an [`Experiment`] is a model with a name, its own knobs, its
//! variants, a constructor and a forward pass. The kit does the rest (loss, accumulation,
//! optimiser, state, the ABI) identically for every experiment and for the built-in baseline.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde_json::{Map, Value};

use crate::config::{KnobType, Knobs};
use crate::gpt::{Gpt, ModelSpec};
use crate::init::ParamStore;
use crate::optim::ParamOptions;
use crate::parts::{BaselineParts, KvCache, Named};

/// One experiment: the baseline GPT with one idea changed. `Sync`, since the shards of a CPU
/// batch run through one model at once ([`shards`](crate::shards)).
pub trait Experiment: Sized + Send + Sync + 'static {
    /// The experiment's own knobs; the model size ([`GptConfig`](crate::gpt::GptConfig)) and
    /// the optimiser ([`OptimConfig`](crate::optim::OptimConfig)) are declared by the kit.
    type Config: Knobs;

    /// Short name, used in run folders and `lmhost describe`.
    const NAME: &'static str;
    /// One line: what the experiment changes.
    const SUMMARY: &'static str;
    /// The method and its source, for `lmhost describe`.
    const DESCRIPTION: &'static str;
    /// True when [`prod_weights`](Self::prod_weights) folds the model into the baseline's layout.
    const SACRIFICIAL: bool = false;

    /// Named variants (the first is the default); none means the defaults are the only variant.
    fn variants() -> Vec<Variant> {
        Vec::new()
    }

    fn build(spec: &ModelSpec, config: &Self::Config, vb: VarBuilder) -> Result<Self>;

    /// The model, when it is the baseline GPT with some parts replaced (the usual case): the kit
    /// then provides the forward pass, cached generation and the prod export.
    fn gpt(&self) -> Option<&Gpt> {
        None
    }

    /// ids: (B, T) u32 → logits: (B, T, V).
    fn forward(&self, ids: &Tensor) -> Result<Tensor> {
        match self.gpt() {
            Some(gpt) => gpt.forward(ids),
            None => candle_core::bail!("{}: implement `gpt` or `forward`", Self::NAME),
        }
    }

    /// Logits of the new positions after the cached ones, for generation; `None` when the model
    /// has no cache (generation then recomputes the whole window for every token).
    fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> Result<Option<Tensor>> {
        self.gpt().map(|gpt| gpt.forward_cached(ids, cache)).transpose()
    }

    /// The weights a user ships: for a sacrificial experiment its parts in the baseline's
    /// layout, otherwise the training weights as they are.
    fn prod_weights(&self, params: &ParamStore) -> Result<Named> {
        match (Self::SACRIFICIAL, self.gpt()) {
            (true, Some(gpt)) => gpt.prod(),
            (true, None) => {
                candle_core::bail!("{} is sacrificial: implement `prod_weights`", Self::NAME)
            }
            (false, _) => Ok(params.tensors()),
        }
    }

    /// Numbers to record beside the loss every `metrics_every` steps (the kit adds the outlier
    /// kurtosis of the residual stream); by default the blocks' own metrics.
    fn extra_metrics(&self) -> Result<Vec<(String, f64)>> {
        self.gpt().map_or(Ok(Vec::new()), Gpt::metrics)
    }

    /// How the optimiser treats one parameter where the experiment departs from the common
    /// settings: a learning-rate multiplier (muP), or weight decay on or off (gains).
    fn param_options(&self, _name: &str) -> ParamOptions {
        ParamOptions::default()
    }
}

/// A named set of config overrides.
#[derive(Debug, Clone)]
pub struct Variant {
    pub name: &'static str,
    pub summary: &'static str,
    pub overrides: Map<String, Value>,
}

impl Variant {
    pub fn new(name: &'static str, summary: &'static str) -> Self {
        Self { name, summary, overrides: Map::new() }
    }

    /// Adds one override, e.g. `.set("value_norm_blocks", Blocks::From1)`.
    pub fn set(mut self, key: &str, value: impl KnobType) -> Self {
        self.overrides.insert(key.to_owned(), value.to_json());
        self
    }
}

/// The built-in baseline, exactly as the host trains it.
pub struct Baseline(pub Gpt);

impl Experiment for Baseline {
    type Config = crate::config::NoKnobs;
    const NAME: &'static str = "baseline";
    const SUMMARY: &'static str =
        "The GPT2ish baseline (lmplay): pre-LN GPT, learned positions, untied head with bias.";
    const DESCRIPTION: &'static str = "Token embedding + learned absolute position embedding \
        (initialised to zero) → L pre-LN blocks (causal self-attention, MLP C→4C→C with exact \
        GELU) → final LayerNorm → untied linear head with bias. Every experiment is compared \
        against this model, trained on the same data, seed and token budget.";

    fn build(spec: &ModelSpec, _config: &Self::Config, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Gpt::new(&BaselineParts, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0)
    }
}
