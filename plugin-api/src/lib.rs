//! The contract between lmhost and an experiment plugin: ABI-stable, versioned, data only.
//!
//! A plugin is a `cdylib` whose root module is a [`PluginModRef`]. The host loads it with
//! abi_stable, which checks at load time that the plugin was built against a compatible version
//! of this crate and that every type below has the layout the host expects. Nothing here is a
//! candle type: a `Tensor` is not ABI-stable, so the boundary carries token ids, numbers, JSON
//! text and safetensors bytes, and the model with its optimiser state lives inside the plugin.
//!
//! Versioning: for a `0.y.z` plugin-api, `y` is the breaking number. Adding a method after a
//! `last_prefix_field` (with a default body) bumps `z` only, and older plugins keep loading.

// abi_stable's `#[sabi_trait]` expands to impls that rustc's `non_local_definitions` lint flags.
#![allow(non_local_definitions)]

use abi_stable::{
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RBox, RErr, ROption, RResult, RSlice, RStr, RString, RVec},
    StableAbi,
};

/// The version of this crate, as abi_stable compares it at load time.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// What a plugin says about itself before anything is built.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PluginInfo {
    /// Short name, as used in run names and `lmhost describe` (e.g. `value_norm`).
    pub name: RString,
    /// The plugin crate's own version.
    pub version: RString,
    /// The plugin-api version the plugin was built against.
    pub api_version: RString,
    /// One line: what the experiment changes.
    pub summary: RString,
    /// A paragraph or more: the method, its source, what to expect.
    pub description: RString,
    /// Named variants; the first is the default.
    pub variants: RVec<VariantInfo>,
    /// Every configuration field the plugin reads.
    pub config_fields: RVec<ConfigField>,
    /// True when the prod weights fold into the baseline's layout (sacrificial training).
    pub sacrificial: bool,
}

/// A named set of config overrides, e.g. `normv1_1` = `{"value_norm_blocks": "from1"}`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct VariantInfo {
    pub name: RString,
    pub summary: RString,
    /// A JSON object of field name to value.
    pub overrides_json: RString,
}

/// One configuration knob: declared once in the plugin, shown by `--help`, `describe`, overrides.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct ConfigField {
    pub name: RString,
    /// `int`, `float`, `bool`, `string`, or `enum`.
    pub kind: RString,
    /// The default as JSON text.
    pub default_json: RString,
    /// Allowed values for an `enum` field, empty otherwise.
    pub choices: RVec<RString>,
    pub help: RString,
}

/// Where and how to build the model; fixed for the life of a run.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct RunSpec {
    /// `cpu` or `cuda:N`.
    pub device: RString,
    /// `f32` or `bf16`.
    pub dtype: RString,
    /// Seeds every parameter's initialisation (and any dropout mask).
    pub seed: u64,
    pub vocab_size: u32,
    /// The longest sequence the model will see (T).
    pub context_length: u32,
}

/// A micro-batch of token windows, row-major `(rows, cols)`; each row holds `T + 1` ids: the
/// model reads `ids[.., ..T]` and predicts `ids[.., 1..]`.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct TokenBatch<'a> {
    pub ids: RSlice<'a, u32>,
    pub rows: u32,
    pub cols: u32,
}

/// Sums over the tokens of one micro-batch, so that the host can average across micro-batches.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Default)]
pub struct BatchStats {
    /// Sum of the cross-entropy over predicted tokens, in nats.
    pub loss_sum: f64,
    /// How many predicted tokens were the argmax of the logits.
    pub correct: u64,
    /// How many tokens were predicted.
    pub tokens: u64,
}

impl std::ops::AddAssign for BatchStats {
    /// Sums of two parts of a batch (micro-batches, shards, validation chunks).
    fn add_assign(&mut self, other: Self) {
        self.loss_sum += other.loss_sum;
        self.correct += other.correct;
        self.tokens += other.tokens;
    }
}

/// What the host decides for one optimiser step.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct StepSettings {
    /// 1-based number of this optimiser step.
    pub step: u64,
    pub lr: f64,
}

/// What one optimiser step reports.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, Default)]
pub struct StepReport {
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f64,
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ParamCounts {
    /// Parameters trained.
    pub train: u64,
    /// Parameters of the exported prod model.
    pub prod: u64,
}

/// What one optimiser step measured, read back with others at a logging interval.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Default)]
pub struct StepStats {
    /// 1-based number of the step.
    pub step: u64,
    /// The sums over the step's micro-batches.
    pub batch: BatchStats,
    /// Global L2 norm of the gradient before clipping.
    pub grad_norm: f64,
}

/// What a plugin's copy of candle did since its process started: tensor ops issued (each a
/// kernel on a GPU) and reads of values back to the host (each a synchronisation on a GPU).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counters {
    pub ops: u64,
    pub host_reads: u64,
}

/// A named number a plugin wants recorded beside the loss (kurtosis, learned gains, ...).
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: RString,
    pub value: f64,
}

/// Why a plugin call failed.
#[repr(u8)]
#[derive(StableAbi, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The plugin panicked; the kit caught it at the boundary.
    Panic,
    /// The config or run spec was rejected.
    Config,
    /// A state or weight file could not be read.
    State,
    /// Anything else the model reported (a shape error, an unsupported device, ...).
    Runtime,
}

#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PluginError {
    pub kind: ErrorKind,
    pub message: RString,
}

impl PluginError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: RString::from(message.into()) }
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.kind {
            ErrorKind::Panic => "panicked",
            ErrorKind::Config => "rejected the config",
            ErrorKind::State => "could not read the state",
            ErrorKind::Runtime => "failed",
        };
        write!(f, "{kind}: {}", self.message)
    }
}

impl std::error::Error for PluginError {}

/// A model with its optimiser, built by a plugin and driven by the host one call at a time.
///
/// Gradients accumulate across [`forward_backward`](TrainableModel::forward_backward) calls until
/// [`optimizer_step`](TrainableModel::optimizer_step) applies and clears them.
#[sabi_trait]
pub trait TrainableModel {
    /// Forward and backward on one micro-batch; the gradient of `loss_sum * loss_scale` is added
    /// to the accumulated gradients (the host passes `1 / tokens per optimiser step`).
    fn forward_backward(
        &mut self,
        batch: TokenBatch<'_>,
        loss_scale: f64,
    ) -> RResult<BatchStats, PluginError>;

    /// Clip, apply and clear the accumulated gradients with this step's learning rate.
    fn optimizer_step(&mut self, settings: StepSettings) -> RResult<StepReport, PluginError>;

    /// Loss and accuracy on a batch, without touching gradients or weights.
    fn evaluate(&mut self, batch: TokenBatch<'_>) -> RResult<BatchStats, PluginError>;

    /// Full state (weights and optimiser) as safetensors bytes; `metadata_json` (a JSON object
    /// of strings) goes into the safetensors header so the file describes itself.
    fn save_state(&self, metadata_json: RStr<'_>) -> RResult<RVec<u8>, PluginError>;

    /// Restore what [`save_state`](TrainableModel::save_state) wrote.
    fn load_state(&mut self, state: RSlice<'_, u8>) -> RResult<(), PluginError>;

    /// The weights a user would ship, as safetensors bytes (the baseline's names and layout for a
    /// sacrificial plugin; the training weights without optimiser state otherwise).
    fn export_prod(&self) -> RResult<RVec<u8>, PluginError>;

    fn param_counts(&self) -> ParamCounts;

    /// Extra metrics measured since the last call (may be empty).
    #[sabi(last_prefix_field)]
    fn extra_metrics(&mut self) -> RResult<RVec<Metric>, PluginError>;

    // Added in 0.1.1. The default bodies answer for plugins built against 0.1.0.

    /// Logits for every position of `batch` (its `cols` ids are all inputs, no target column):
    /// `rows × cols × V` values, row-major.
    fn logits(&mut self, batch: TokenBatch<'_>) -> RResult<RVec<f32>, PluginError> {
        let _ = batch;
        RErr(older_plugin("logits"))
    }

    /// Continues `prompt`; returns the new tokens.
    fn generate(
        &mut self,
        prompt: RSlice<'_, u32>,
        settings: GenerateSettings,
    ) -> RResult<RVec<u32>, PluginError> {
        let _ = (prompt, settings);
        RErr(older_plugin("generate"))
    }

    /// Replaces the model's weights with a safetensors file named as its parameters (an export,
    /// or prod weights loaded into the baseline); the optimiser is untouched.
    fn load_weights(&mut self, weights: RSlice<'_, u8>) -> RResult<(), PluginError> {
        let _ = weights;
        RErr(older_plugin("load_weights"))
    }

    // Added in 0.1.2: a step that reads nothing back until the host asks.

    /// [`forward_backward`](TrainableModel::forward_backward) without reading the loss back: the
    /// micro-batch's sums are added to the step's on the device.
    fn accumulate(&mut self, batch: TokenBatch<'_>, loss_scale: f64) -> RResult<(), PluginError> {
        let _ = (batch, loss_scale);
        RErr(older_plugin("accumulate"))
    }

    /// [`optimizer_step`](TrainableModel::optimizer_step) without reading the gradient norm back.
    fn apply_step(&mut self, settings: StepSettings) -> RResult<(), PluginError> {
        let _ = settings;
        RErr(older_plugin("apply_step"))
    }

    /// What every step applied since the last call measured, read back at once.
    fn take_step_stats(&mut self) -> RResult<RVec<StepStats>, PluginError> {
        RErr(older_plugin("take_step_stats"))
    }

    /// The plugin's op and read-back counts (zeros from plugins built before 0.1.2).
    fn counters(&self) -> Counters {
        Counters::default()
    }

    // Added in 0.1.3.

    /// Every parameter and how the optimiser treats it, as a JSON array of objects
    /// `{"name", "shape", "decay", "rule", "lr_scale"}` (`rule`: the update rule, e.g. adamw or
    /// muon), in the model's order: what `lmhost describe` lists.
    fn parameters(&self) -> RResult<RString, PluginError> {
        RErr(older_plugin("parameters"))
    }

    /// The training FLOPs per token (forward and backward) of the model's matrix products,
    /// counted on one forward pass over a context of distinct tokens.
    fn flops_per_token(&mut self) -> RResult<f64, PluginError> {
        RErr(older_plugin("flops_per_token"))
    }
}

fn older_plugin(call: &str) -> PluginError {
    PluginError::new(
        ErrorKind::Runtime,
        format!("`{call}` needs a plugin built against plugin-api {API_VERSION} or later; rebuild it with `cargo build --release --workspace`"),
    )
}

/// How to sample a continuation.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, Copy)]
pub struct GenerateSettings {
    pub max_tokens: u32,
    /// 0 is greedy.
    pub temperature: f64,
    /// 0 keeps every token.
    pub top_k: u32,
    /// 1 keeps every token.
    pub top_p: f64,
    pub seed: u64,
    /// Stop after this token (e.g. end-of-text).
    pub stop_token: ROption<u32>,
}

/// An owned model behind the ABI-stable trait object.
pub type ModelBox = TrainableModel_TO<'static, RBox<()>>;

/// The root module every plugin exports (the kit's `export_plugin!` writes it).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
#[sabi(missing_field(panic))]
pub struct PluginMod {
    pub info: extern "C" fn() -> PluginInfo,

    /// Defaults filled in, unknown keys and bad values rejected: the config the run records.
    pub resolve_config: extern "C" fn(config_json: RStr<'_>) -> RResult<RString, PluginError>,

    #[sabi(last_prefix_field)]
    pub create: extern "C" fn(spec: &RunSpec, config_json: RStr<'_>) -> RResult<ModelBox, PluginError>,

    /// Added in 0.1.2: the cargo features the plugin was built with (`cuda`), so that the host
    /// can refuse a device the plugin cannot use before anything trains.
    #[sabi(missing_field(option))]
    pub features: extern "C" fn() -> RVec<RString>,
}

impl RootModule for PluginModRef {
    abi_stable::declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "lmhost_plugin";
    const NAME: &'static str = "lmhost plugin-api";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

/// The abi_stable this API is written with, for the kit and the host to use the same one.
pub use abi_stable;
