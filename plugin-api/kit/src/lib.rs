//! The lmhost authoring kit: what an experiment plugin is written with, and nothing of the host.
//!
//! A plugin implements [`Experiment`] (usually the baseline [`gpt::Gpt`] with one idea changed)
//! and calls [`export_plugin!`]. The kit supplies the rest, identically for every plugin and for
//! the host's built-in baseline: seeded initialisation ([`init`]), layers with working gradients
//! ([`nn`]), optimisers with checkpointable state ([`optim`]), the training step and state files
//! ([`trainer`]), and the ABI adapter with its panic guard ([`export`]).
//!
//! A whole plugin (the README shows the same code):
//!
//! ```
#![doc = include_str!("../../../docs/example_plugin.rs")]
//! ```

pub mod config;
pub mod experiment;
pub mod export;
pub mod generate;
pub mod gpt;
pub mod init;
pub mod kernels;
pub mod metrics;
pub mod nn;
pub mod optim;
pub mod parts;
pub mod precision;
pub mod shards;
pub mod testing;
pub mod trainer;

pub use experiment::{Baseline, Experiment, Variant};
pub use gpt::{Gpt, GptConfig, ModelSpec};

// What a plugin crate needs, reachable through the kit alone.
pub use candle_core as candle;
pub use candle_nn;
pub use plugin_api;
pub use serde_json;

/// `use lmhost_kit::prelude::*;` brings in what a plugin's `lib.rs` usually needs, candle and
/// candle-nn among it (the workspace's one version; a plugin never adds them itself):
///
/// ```
/// use lmhost_kit::prelude::*;
/// let x = Tensor::new(&[0f32, 1.0], &Device::Cpu)?;
/// let y = candle_nn::ops::sigmoid(&x)?; // candle-nn through the kit
/// assert_eq!(y.to_vec1::<f32>()?[0], 0.5);
/// let _: candle::DType = y.dtype();
/// # Ok::<(), candle::Error>(())
/// ```
pub mod prelude {
    pub use crate::config::{KnobType, Knobs};
    pub use crate::experiment::{Experiment, Variant};
    pub use crate::gpt::{
        Activation, Arch, CausalSelfAttention, Gpt, GptConfig, Mlp, ModelSpec, PreLnBlock, QkNormAttention,
        SwiGlu,
    };
    pub use crate::init::ParamStore;
    pub use crate::kernels;
    pub use crate::nn::{self, LayerNorm, Linear, RmsNorm};
    pub use crate::optim::ParamOptions;
    pub use crate::parts::{
        Attention, BaselineParts, Block, Dense, DenseSpec, FeedForward, KvCache, LayerCache, Named, Norm,
        Positions, Recipe, TokenEmbedding,
    };
    pub use crate::{export_plugin, knob_enum, knobs};
    // candle and candle-nn come with the kit (one version for the whole workspace): write
    // `candle_nn::ops::…` after this prelude; never `cargo add` them to a plugin.
    pub use crate::{candle, candle_nn};
    pub use candle_core::{DType, Device, Module, Result, Tensor, D};
    pub use candle_nn::{Init, VarBuilder};
}
