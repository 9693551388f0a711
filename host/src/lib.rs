//! lmhost: trains experiment plugins against a built-in baseline GPT on the same data, seed and
//! token budget, and records every number as Arrow.
//!
//! The host owns *when* and *what data*; a plugin owns *what model*. [`orchestrate`] runs an
//! experiment (`lmhost run`): it resolves each arm's [`config`], prepares the data once, writes
//! a run folder per arm ([`run_store`]) and trains each arm in a worker process ([`train`]),
//! which drives the plugin ([`plugin`]) through the ABI-stable boundary of `plugin-api`.

pub mod bench;
pub mod cli;
pub mod config;
pub mod events;
pub mod export_cmd;
pub mod generate_cmd;
pub mod hf_gpt2;
pub mod interpolate;
pub mod interrupt;
pub mod logits_cmd;
pub mod memory;
pub mod model;
pub mod orchestrate;
pub mod plan;
pub mod plugin;
pub mod report_cmd;
pub mod restore;
pub mod run_store;
pub mod scaffold;
pub mod schedule;
pub mod sweep;
pub mod train;
pub mod workspace;
