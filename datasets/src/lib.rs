//! Data for lmhost: corpora (the embedded Shakespeare default ships here), byte-level BPE
//! tokenizers, on-disk token caches keyed by everything they depend on, deterministic
//! train/validation splits and batches. [`PreparedData`] is the central type: a corpus turned
//! into tokenised training and validation streams.

pub mod batches;
pub mod corpus;
pub mod prepare;

use std::path::Path;

pub use batches::{train_batch, validation_windows};
pub use corpus::{Corpus, Document};
pub use prepare::{DataManifest, DataSettings, PreparedData, END_OF_TEXT};
pub use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("unknown dataset `{0}`: the embedded one is `shakespeare`")]
    UnknownDataset(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.display().to_string(), source }
    }
}
