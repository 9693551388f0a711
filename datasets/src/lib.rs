//! Data for lmhost: corpora (the embedded Shakespeare default ships here), byte-level BPE
//! tokenizers, on-disk token caches keyed by everything they depend on, deterministic
//! train/validation splits and batches. [`PreparedData`] is the central type: a corpus turned
//! into tokenised training and validation streams.

pub mod batches;
pub mod corpus;
pub mod prepare;
pub mod sources;
pub mod tokens;

use std::path::Path;

pub use batches::{mixed_batch, train_batch, validation_windows};
pub use corpus::Corpus;
pub use prepare::{DataManifest, DataSettings, PreparedData, TestSplit, END_OF_TEXT};
pub use sources::{Document, Source};
pub use tokenizers::Tokenizer;
pub use tokens::Tokens;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("unknown dataset `{0}`: use shakespeare (embedded), text:PATH, jsonl:PATH#field, parquet:PATH#column, arrow:PATH#column or hub:OWNER/NAME#column")]
    UnknownDataset(String),
    #[error("{0}")]
    Source(String),
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
