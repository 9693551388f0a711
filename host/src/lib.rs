//! lmhost: trains experiment plugins against a built-in baseline GPT on the same data, seed and
//! token budget, and records every number as Arrow.
//!
//! The host owns *when* and *what data*; a plugin owns *what model*. [`orchestrate`] runs an
//! experiment (`lmhost run`): it resolves a [`request`] into each arm's [`config`], decides what
//! each arm needs ([`run_plan`]), prepares the data once, writes a run folder per arm
//! ([`run_store`]) and trains each arm in a [`worker`] process ([`train`]), which drives the
//! plugin ([`plugin`]) through the ABI-stable boundary of `plugin-api`; [`lineage`] resumes and
//! branches runs, [`checkpoints`] names their states.

pub mod bench;
pub mod checkpoints;
pub mod cli;
pub mod config;
pub mod console;
pub mod events;
pub mod export_cmd;
pub mod generate_cmd;
pub mod hf;
pub mod interpolate;
pub mod interrupt;
pub mod lineage;
pub mod logits_cmd;
pub mod memory;
pub mod model;
pub mod orchestrate;
pub mod plan;
pub mod plugin;
pub mod report_cmd;
pub mod request;
pub mod restore;
pub mod run_plan;
pub mod run_store;
pub mod scaffold;
pub mod schedule;
pub mod serve;
pub mod study;
pub mod sweep;
pub mod train;
pub mod worker;
pub mod workspace;
