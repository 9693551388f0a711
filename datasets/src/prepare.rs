//! From a corpus to token ids: a byte-level BPE tokenizer trained on the training documents and
//! the tokenised splits, both cached on disk under a key made of everything they depend on.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper, PostProcessorWrapper, Tokenizer, TokenizerBuilder};

use crate::corpus::{hex, Corpus};
use crate::DataError;

/// Separates documents in the token stream; always id 0.
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Bump when the tokenizer recipe or the cache format changes: old caches are then never read.
const RECIPE_VERSION: u32 = 1;
const TOKENS_MAGIC: &[u8; 8] = b"LMHTOKS1";

/// What the data of a run depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSettings {
    /// Corpus name (`shakespeare` is embedded).
    pub dataset: String,
    /// Requested BPE vocabulary size, special tokens included.
    pub vocab_size: usize,
    /// Fraction of the corpus bytes held out for validation, by whole documents.
    pub val_fraction: f64,
    /// Fixes which documents are held out.
    pub split_seed: u64,
}

/// What `meta.json` in a cache folder records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataManifest {
    pub settings: DataSettings,
    pub corpus_fingerprint: String,
    /// sha256 of `tokenizer.json`.
    pub tokenizer_fingerprint: String,
    /// The tokenizer's actual vocabulary size (BPE may stop below the request on a small corpus).
    pub vocab_size: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub val_documents: Vec<String>,
    /// sha256 of the validation token ids.
    pub val_fingerprint: String,
}

/// Tokenised training and validation streams, ready for batching.
#[derive(Debug, Clone)]
pub struct PreparedData {
    /// The cache folder: `tokenizer.json`, `tokens.bin`, `meta.json`.
    pub dir: PathBuf,
    pub manifest: DataManifest,
    pub train: Vec<u32>,
    pub val: Vec<u32>,
}

impl PreparedData {
    /// Loads the cache for `settings` from `cache_root`, building it first if absent.
    pub fn prepare(settings: &DataSettings, cache_root: &Path) -> Result<Self, DataError> {
        let corpus = Corpus::named(&settings.dataset)?;
        let dir = cache_root.join(&settings.dataset).join(cache_key(settings, &corpus));
        if !dir.join("meta.json").exists() {
            build_cache(settings, &corpus, &dir)?;
        }
        Self::load(&dir)
    }

    /// Loads a cache folder written by [`prepare`](Self::prepare), checking it is whole.
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let meta_path = dir.join("meta.json");
        let manifest: DataManifest = serde_json::from_slice(&read(&meta_path)?)
            .map_err(|e| DataError::Corrupt(format!("{}: {e}", meta_path.display())))?;
        let (train, val) = read_tokens(&dir.join("tokens.bin"))?;
        if train.len() != manifest.train_tokens || val.len() != manifest.val_tokens {
            return Err(DataError::Corrupt(format!(
                "{}: token counts differ from meta.json; delete the folder to rebuild it",
                dir.display()
            )));
        }
        Ok(Self { dir: dir.to_owned(), manifest, train, val })
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    pub fn tokenizer(&self) -> Result<Tokenizer, DataError> {
        Tokenizer::from_file(self.tokenizer_path())
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", self.tokenizer_path().display())))
    }
}

fn cache_key(settings: &DataSettings, corpus: &Corpus) -> String {
    let recipe = serde_json::json!({
        "recipe": RECIPE_VERSION,
        "corpus": corpus.fingerprint,
        "settings": settings,
    });
    format!("bpe{}-{}", settings.vocab_size, &hex(&Sha256::digest(recipe.to_string()))[..16])
}

/// Byte-level BPE (GPT-2's pre-tokenisation, no prefix space) trained on `texts`.
pub fn train_bpe<'a>(
    texts: impl Iterator<Item = &'a str> + Send,
    vocab_size: usize,
) -> Result<Tokenizer, DataError> {
    let err = |e: tokenizers::Error| DataError::Tokenizer(e.to_string());
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(vec![AddedToken::from(END_OF_TEXT, true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    let mut tokenizer =
        TokenizerBuilder::<BPE, NormalizerWrapper, ByteLevel, PostProcessorWrapper, ByteLevel>::new()
            .with_model(BPE::default())
            .with_normalizer(None)
            .with_pre_tokenizer(Some(ByteLevel::new(false, true, true)))
            .with_post_processor(None)
            .with_decoder(Some(ByteLevel::default()))
            .build()
            .map_err(err)?;
    tokenizer.train(&mut trainer, texts).map_err(err)?;
    let json = tokenizer.to_string(false).map_err(err)?;
    json.parse::<Tokenizer>().map_err(err)
}

fn build_cache(settings: &DataSettings, corpus: &Corpus, dir: &Path) -> Result<(), DataError> {
    tracing::info!(dataset = %settings.dataset, vocab = settings.vocab_size, "training the BPE tokenizer (cached afterwards)");
    let split = corpus.split(settings.val_fraction, settings.split_seed);
    let tokenizer = train_bpe(split.train.iter().map(|d| d.text.as_str()), settings.vocab_size)?;
    let eot = tokenizer
        .token_to_id(END_OF_TEXT)
        .ok_or_else(|| DataError::Tokenizer("the trained tokenizer lost its end-of-text token".into()))?;
    let encode = |docs: &[&crate::corpus::Document]| -> Result<Vec<u32>, DataError> {
        let texts: Vec<&str> = docs.iter().map(|d| d.text.as_str()).collect();
        let encodings =
            tokenizer.encode_batch(texts, false).map_err(|e| DataError::Tokenizer(e.to_string()))?;
        Ok(encodings.iter().flat_map(|e| e.get_ids().iter().copied().chain(std::iter::once(eot))).collect())
    };
    let train = encode(&split.train)?;
    let val = encode(&split.val)?;
    let json = tokenizer.to_string(false).map_err(|e| DataError::Tokenizer(e.to_string()))?;
    let manifest = DataManifest {
        settings: settings.clone(),
        corpus_fingerprint: corpus.fingerprint.clone(),
        tokenizer_fingerprint: hex(&Sha256::digest(json.as_bytes())),
        vocab_size: tokenizer.get_vocab_size(true),
        train_tokens: train.len(),
        val_tokens: val.len(),
        val_documents: split.val.iter().map(|d| d.id.clone()).collect(),
        val_fingerprint: hex(&Sha256::digest(val.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>())),
    };
    // Write into a fresh folder beside the target and rename it into place, so a reader never
    // sees half a cache and two processes preparing the same data do not collide.
    let parent = dir.parent().expect("cache dir has a parent");
    fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    let tmp = parent.join(format!(".tmp-{}-{}", std::process::id(), unique()));
    fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    write(&tmp.join("tokenizer.json"), json.as_bytes())?;
    write_tokens(&tmp.join("tokens.bin"), &train, &val, manifest.vocab_size)?;
    let meta = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    write(&tmp.join("meta.json"), &meta)?;
    if fs::rename(&tmp, dir).is_err() {
        // Another process finished first; its cache is identical by construction.
        let _ = fs::remove_dir_all(&tmp);
        if !dir.join("meta.json").exists() {
            return Err(DataError::Corrupt(format!("cannot create the cache folder {}", dir.display())));
        }
    }
    Ok(())
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

fn write_tokens(path: &Path, train: &[u32], val: &[u32], vocab_size: usize) -> Result<(), DataError> {
    let width: u32 = if vocab_size <= 1 << 16 { 2 } else { 4 };
    let mut out = Vec::with_capacity(28 + (train.len() + val.len()) * width as usize);
    out.extend_from_slice(TOKENS_MAGIC);
    out.extend_from_slice(&width.to_le_bytes());
    out.extend_from_slice(&(train.len() as u64).to_le_bytes());
    out.extend_from_slice(&(val.len() as u64).to_le_bytes());
    for &t in train.iter().chain(val) {
        if width == 2 {
            out.extend_from_slice(&(t as u16).to_le_bytes());
        } else {
            out.extend_from_slice(&t.to_le_bytes());
        }
    }
    write(path, &out)
}

fn read_tokens(path: &Path) -> Result<(Vec<u32>, Vec<u32>), DataError> {
    let bytes = read(path)?;
    let corrupt = || {
        DataError::Corrupt(format!(
            "{} is not a token cache; delete its folder to rebuild it",
            path.display()
        ))
    };
    if bytes.len() < 28 || &bytes[..8] != TOKENS_MAGIC {
        return Err(corrupt());
    }
    let width = u32::from_le_bytes(bytes[8..12].try_into().unwrap()) as usize;
    let n_train = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
    let n_val = u64::from_le_bytes(bytes[20..28].try_into().unwrap()) as usize;
    let body = &bytes[28..];
    if !(width == 2 || width == 4) || body.len() != (n_train + n_val) * width {
        return Err(corrupt());
    }
    let ids: Vec<u32> = body
        .chunks_exact(width)
        .map(|c| {
            if width == 2 {
                u16::from_le_bytes([c[0], c[1]]) as u32
            } else {
                u32::from_le_bytes(c.try_into().unwrap())
            }
        })
        .collect();
    let (train, val) = ids.split_at(n_train);
    Ok((train.to_vec(), val.to_vec()))
}

fn read(path: &Path) -> Result<Vec<u8>, DataError> {
    let mut f = fs::File::open(path).map_err(|e| DataError::io(path, e))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf).map_err(|e| DataError::io(path, e))?;
    Ok(buf)
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), DataError> {
    let mut f = fs::File::create(path).map_err(|e| DataError::io(path, e))?;
    f.write_all(bytes).map_err(|e| DataError::io(path, e))?;
    f.sync_all().map_err(|e| DataError::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vocab: usize) -> DataSettings {
        DataSettings { dataset: "shakespeare".into(), vocab_size: vocab, val_fraction: 0.1, split_seed: 0 }
    }

    #[test]
    fn bpe_training_is_deterministic_and_round_trips_text() {
        let texts =
            ["To be, or not to be: that is the question.", "Whether 'tis nobler in the mind to suffer"];
        let a = train_bpe(texts.iter().copied().cycle().take(40), 300).unwrap();
        let b = train_bpe(texts.iter().copied().cycle().take(40), 300).unwrap();
        assert_eq!(a.to_string(false).unwrap(), b.to_string(false).unwrap());
        assert_eq!(a.token_to_id(END_OF_TEXT), Some(0));
        let ids = a.encode("To be, or not", false).unwrap().get_ids().to_vec();
        assert_eq!(a.decode(&ids, false).unwrap(), "To be, or not");
    }

    #[test]
    fn prepared_data_is_cached_and_reloaded_unchanged() {
        let root = tempfile::tempdir().unwrap();
        let first = PreparedData::prepare(&settings(512), root.path()).unwrap();
        assert!(first.manifest.vocab_size <= 512 && first.manifest.vocab_size > 256);
        assert!(first.train.len() > 10 * first.val.len() / 2);
        assert!(first.train.iter().chain(&first.val).all(|&t| (t as usize) < first.manifest.vocab_size));
        let again = PreparedData::prepare(&settings(512), root.path()).unwrap();
        assert_eq!(first.dir, again.dir);
        assert_eq!(first.train, again.train);
        // A different setting never reuses the cache.
        let other =
            PreparedData::prepare(&DataSettings { split_seed: 1, ..settings(512) }, root.path()).unwrap();
        assert_ne!(first.dir, other.dir);
        // A damaged cache is reported, not used.
        std::fs::write(first.dir.join("tokens.bin"), b"LMHTOKS1 short").unwrap();
        assert!(matches!(PreparedData::load(&first.dir), Err(DataError::Corrupt(_))));
    }
}
