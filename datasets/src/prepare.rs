//! From a source to token ids: the validation documents chosen, a byte-level BPE tokenizer
//! trained on the training documents (or a given `tokenizer.json` loaded), and both splits
//! tokenised to disk, in one streaming pass each, all cached under a key made of everything they
//! depend on: the source's bytes, the settings, the tokenizer and this recipe's version.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, NormalizerWrapper, PostProcessorWrapper, Tokenizer, TokenizerBuilder};

use crate::corpus::hex;
use crate::sources::Source;
use crate::tokens::{TokenWriter, Tokens};
use crate::DataError;

/// Separates documents in the token stream (id 0 in a trained tokenizer).
pub const END_OF_TEXT: &str = "<|endoftext|>";

/// Bump when the recipe or the cache format changes: old caches are then never read.
const RECIPE_VERSION: u32 = 3;

/// Validation documents listed by key in the manifest (the rest are counted).
const LISTED: usize = 1000;

/// What the data of a run depends on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataSettings {
    /// The source: `shakespeare`, `text:PATH`, `jsonl:PATH#field`, `parquet:PATH#column`, `arrow:PATH#column`.
    pub dataset: String,
    /// Requested BPE vocabulary size, special tokens included.
    pub vocab_size: usize,
    /// Fraction of the corpus bytes held out for validation, by whole documents (0: none).
    pub val_fraction: f64,
    /// Fixes which documents are held out.
    pub split_seed: u64,
    /// Fraction of the corpus bytes held out as a test split, by whole documents, after the
    /// validation documents (0: none). Left out of the cache key at 0, so the data of every run
    /// without a test split is what it was.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub test_fraction: f64,
    /// `bpe` trains one on the training documents; otherwise the path of a `tokenizer.json`.
    pub tokenizer: String,
    /// Special tokens a trained tokenizer adds after `<|endoftext|>`, separated by spaces.
    pub special_tokens: String,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
}

/// What `meta.json` in a cache folder records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataManifest {
    pub settings: DataSettings,
    /// sha256 of every byte the source read.
    pub source_fingerprint: String,
    /// sha256 of `tokenizer.json` as the tokenizers crate writes it.
    pub tokenizer_fingerprint: String,
    /// sha256 of what decides the ids a text gets: the model (vocabulary and merges), the
    /// normalizer, the pre-tokenizer and the added tokens ([`tokenizer_content`]); equal for a
    /// tokenizer re-saved by `transformers`. Absent in caches made before it was recorded.
    #[serde(default)]
    pub tokenizer_content: Option<String>,
    /// The tokenizer's vocabulary size (BPE may stop below the request on a small corpus).
    pub vocab_size: usize,
    /// Bytes per stored id: 2 or 4.
    pub width: usize,
    pub train_tokens: usize,
    pub val_tokens: usize,
    pub train_document_count: usize,
    pub val_document_count: usize,
    /// The keys of the validation documents (the first thousand).
    pub val_documents: Vec<String>,
    /// sha256 of the validation token ids.
    pub val_fingerprint: String,
    /// The test split, when the settings hold one out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test: Option<TestSplit>,
}

/// The held-out test documents: disjoint from training and validation, fixed by `split_seed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TestSplit {
    pub tokens: usize,
    pub document_count: usize,
    /// sha256 of the test token ids.
    pub fingerprint: String,
}

/// Tokenised training, validation and (when held out) test streams, memory-mapped, ready for
/// batching.
pub struct PreparedData {
    /// The cache folder: `tokenizer.json`, `train.tokens`, `val.tokens`, `test.tokens` (with a
    /// test split), `meta.json`.
    pub dir: PathBuf,
    pub manifest: DataManifest,
    pub train: Tokens,
    pub val: Tokens,
    pub test: Option<Tokens>,
}

/// How far preparation has come: (what, bytes done, bytes in all).
pub type Progress<'a> = &'a (dyn Fn(&str, u64, u64) + Sync);

impl PreparedData {
    /// Loads the cache for `settings` from `cache_root`, building it first if absent.
    pub fn prepare(settings: &DataSettings, cache_root: &Path) -> Result<Self, DataError> {
        Self::prepare_with(settings, cache_root, &|_, _, _| {})
    }

    /// As [`prepare`](Self::prepare), reporting progress while building.
    pub fn prepare_with(
        settings: &DataSettings,
        cache_root: &Path,
        progress: Progress,
    ) -> Result<Self, DataError> {
        let source: Source = settings.dataset.parse()?;
        let key = cache_key(settings, &source)?;
        let dir = cache_root.join(slug(&settings.dataset)).join(key);
        if !dir.join("meta.json").exists() {
            build_cache(settings, &source, &dir, progress)?;
        }
        Self::load(&dir)
    }

    /// Loads a cache folder written by [`prepare`](Self::prepare), checking it is whole.
    pub fn load(dir: &Path) -> Result<Self, DataError> {
        let meta_path = dir.join("meta.json");
        let bytes = fs::read(&meta_path).map_err(|e| DataError::io(&meta_path, e))?;
        let manifest: DataManifest = serde_json::from_slice(&bytes)
            .map_err(|e| DataError::Corrupt(format!("{}: {e}", meta_path.display())))?;
        let train = Tokens::open(&dir.join("train.tokens"), manifest.width)?;
        let val = Tokens::open(&dir.join("val.tokens"), manifest.width)?;
        let test = manifest
            .test
            .as_ref()
            .map(|_| Tokens::open(&dir.join("test.tokens"), manifest.width))
            .transpose()?;
        let test_len = test.as_ref().map(Tokens::len);
        if train.len() != manifest.train_tokens
            || val.len() != manifest.val_tokens
            || test_len != manifest.test.as_ref().map(|t| t.tokens)
        {
            return Err(DataError::Corrupt(format!(
                "{}: token counts differ from meta.json; delete the folder to rebuild it",
                dir.display()
            )));
        }
        Ok(Self { dir: dir.to_owned(), manifest, train, val, test })
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }

    pub fn tokenizer(&self) -> Result<Tokenizer, DataError> {
        Tokenizer::from_file(self.tokenizer_path())
            .map_err(|e| DataError::Tokenizer(format!("{}: {e}", self.tokenizer_path().display())))
    }
}

/// A folder name for a source spec.
fn slug(spec: &str) -> String {
    let s: String = spec.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    s.chars().take(48).collect()
}

fn cache_key(settings: &DataSettings, source: &Source) -> Result<String, DataError> {
    let tokenizer = match settings.tokenizer.as_str() {
        "bpe" => "bpe".to_owned(),
        path => hex(&Sha256::digest(fs::read(path).map_err(|e| DataError::io(Path::new(path), e))?)),
    };
    let recipe = serde_json::json!({
        "recipe": RECIPE_VERSION,
        "source": source.fingerprint()?,
        "settings": settings,
        "tokenizer": tokenizer,
    });
    Ok(format!("v{}-{}", settings.vocab_size, &hex(&Sha256::digest(recipe.to_string()))[..16]))
}

/// The fingerprint of what decides a tokenizer's ids: sha256 of its `model`, `normalizer`,
/// `pre_tokenizer` and `added_tokens`, keys sorted. Formatting, the post-processor (which adds
/// nothing here: lmhost encodes without special tokens) and the decoder do not count, so a
/// `tokenizer.json` that `transformers` saved again is the same tokenizer.
pub fn tokenizer_content(tokenizer_json: &str) -> Result<String, DataError> {
    fn sorted(v: &serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Object(m) => {
                let sorted: std::collections::BTreeMap<&String, serde_json::Value> =
                    m.iter().map(|(k, v)| (k, sorted(v))).collect();
                serde_json::to_value(sorted).expect("a map of JSON values")
            }
            serde_json::Value::Array(a) => serde_json::Value::Array(a.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    let json: serde_json::Value = serde_json::from_str(tokenizer_json)
        .map_err(|e| DataError::Tokenizer(format!("tokenizer.json is not JSON: {e}")))?;
    let parts: Vec<String> = ["model", "normalizer", "pre_tokenizer", "added_tokens"]
        .iter()
        .map(|k| sorted(&json[k]).to_string())
        .collect();
    Ok(hex(&Sha256::digest(parts.join("\n"))))
}

/// Byte-level BPE (GPT-2's pre-tokenisation, no prefix space) trained on `texts`, with
/// `<|endoftext|>` (id 0) and any further special tokens.
pub fn train_bpe<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    vocab_size: usize,
    special: &[&str],
) -> Result<Tokenizer, DataError> {
    let err = |e: tokenizers::Error| DataError::Tokenizer(e.to_string());
    let specials = std::iter::once(END_OF_TEXT)
        .chain(special.iter().copied())
        .map(|t| AddedToken::from(t, true))
        .collect();
    let mut trainer = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(vocab_size)
        .min_frequency(2)
        .special_tokens(specials)
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
    tokenizer.to_string(false).map_err(err)?.parse::<Tokenizer>().map_err(err)
}

/// Which documents are held out: in an order fixed by the seed (sha256 of seed and key), whole
/// documents until at least `val_fraction` of the bytes for validation, then the next ones until
/// `test_fraction` for the test split (so the validation set is the same with or without one),
/// never all of them. Keeps 24 bytes per document, not the text. Returns the validation and test
/// indices and the bytes of the whole source.
fn choose_held_out(
    source: &Source,
    settings: &DataSettings,
) -> Result<(HashSet<usize>, HashSet<usize>, u64), DataError> {
    let mut docs: Vec<(u64, u64, usize)> = Vec::new(); // (order, bytes, index)
    let mut total = 0u64;
    for (i, doc) in source.documents()?.enumerate() {
        let doc = doc?;
        total += doc.text.len() as u64;
        let h = Sha256::digest(format!("{}:{}", settings.split_seed, doc.key));
        docs.push((u64::from_be_bytes(h[..8].try_into().expect("8 bytes")), doc.text.len() as u64, i));
    }
    if settings.val_fraction == 0.0 {
        // A training-only source (a plan stage's data): nothing held out.
        return Ok((HashSet::new(), HashSet::new(), total));
    }
    let needed = if settings.test_fraction > 0.0 { 3 } else { 2 };
    if docs.len() < needed {
        return Err(DataError::Source(format!(
            "{} has {} document(s); {} needs at least {needed}",
            settings.dataset,
            docs.len(),
            if needed == 3 { "a validation and a test split" } else { "a validation split" }
        )));
    }
    docs.sort_unstable();
    let mut order = docs.iter().map(|&(_, bytes, i)| (bytes, i));
    let mut take = |fraction: f64, keep: usize| {
        let target = (total as f64 * fraction).ceil() as u64;
        let (mut held, mut chosen) = (0u64, HashSet::new());
        while held < target {
            // Never the last `keep` documents: training (and the test split) need theirs.
            if order.len() <= keep {
                break;
            }
            let (bytes, i) = order.next().expect("checked above");
            held += bytes;
            chosen.insert(i);
        }
        chosen
    };
    let val = take(settings.val_fraction, needed - 1);
    let test = if settings.test_fraction > 0.0 { take(settings.test_fraction, 1) } else { HashSet::new() };
    Ok((val, test, total))
}

fn build_cache(
    settings: &DataSettings,
    source: &Source,
    dir: &Path,
    progress: Progress,
) -> Result<(), DataError> {
    let (val_set, test_set, total_bytes) = choose_held_out(source, settings)?;
    let tokenizer = match settings.tokenizer.as_str() {
        "bpe" => {
            tracing::info!(dataset = %settings.dataset, vocab = settings.vocab_size, "training the BPE tokenizer (cached afterwards)");
            let failure = Mutex::new(None);
            let texts = source
                .documents()?
                .enumerate()
                .filter(|(i, _)| !val_set.contains(i) && !test_set.contains(i))
                .map_while(|(_, d)| match d {
                    Ok(d) => Some(d.text),
                    Err(e) => {
                        *failure.lock().expect("lock") = Some(e);
                        None
                    }
                });
            let special: Vec<&str> = settings.special_tokens.split_whitespace().collect();
            let tokenizer = train_bpe(texts, settings.vocab_size, &special)?;
            if let Some(e) = failure.into_inner().expect("lock") {
                return Err(e);
            }
            tokenizer
        }
        path => Tokenizer::from_file(path).map_err(|e| DataError::Tokenizer(format!("{path}: {e}")))?,
    };
    let eot = tokenizer.token_to_id(END_OF_TEXT);
    let vocab_size = tokenizer.get_vocab_size(true);
    let width = if vocab_size <= 1 << 16 { 2 } else { 4 };
    let json = tokenizer.to_string(false).map_err(|e| DataError::Tokenizer(e.to_string()))?;

    // Write into a fresh folder beside the target and rename it into place, so a reader never
    // sees half a cache and two processes preparing the same data do not collide.
    let parent = dir.parent().expect("cache dir has a parent");
    fs::create_dir_all(parent).map_err(|e| DataError::io(parent, e))?;
    let tmp = parent.join(format!(".tmp-{}-{}", std::process::id(), unique()));
    fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    let mut train = TokenWriter::create(&tmp.join("train.tokens"), width)?;
    let mut val = TokenWriter::create(&tmp.join("val.tokens"), width)?;
    let mut test =
        (!test_set.is_empty()).then(|| TokenWriter::create(&tmp.join("test.tokens"), width)).transpose()?;
    let (mut val_hash, mut test_hash) = (Sha256::new(), Sha256::new());
    let (mut done, mut counts, mut test_docs) = (0u64, (0usize, 0usize), 0usize);
    let mut val_keys = Vec::new();
    // Documents wait here until about CHUNK bytes are gathered, then are encoded in parallel as
    // pieces of at most PIECE bytes: memory stays bounded however large a document is.
    let mut chunk: Vec<(usize, String)> = Vec::new();
    let mut chunk_bytes = 0usize;
    let mut flush = |chunk: &mut Vec<(usize, String)>, done: &mut u64| -> Result<(), DataError> {
        let pieces: Vec<(usize, &str)> =
            chunk.iter().enumerate().flat_map(|(d, (_, text))| pieces(text).map(move |p| (d, p))).collect();
        let encodings = tokenizer
            .encode_batch_fast(pieces.iter().map(|p| p.1).collect::<Vec<_>>(), false)
            .map_err(|e| DataError::Tokenizer(e.to_string()))?;
        let mut ids: Vec<Vec<u32>> = vec![Vec::new(); chunk.len()];
        for ((d, _), enc) in pieces.iter().zip(encodings) {
            ids[*d].extend_from_slice(enc.get_ids());
        }
        for ((i, text), mut ids) in chunk.iter().zip(ids) {
            ids.extend(eot);
            if val_set.contains(i) {
                ids.iter().for_each(|t| val_hash.update(t.to_le_bytes()));
                val.push(&ids)?;
                counts.1 += 1;
            } else if let (true, Some(test)) = (test_set.contains(i), test.as_mut()) {
                ids.iter().for_each(|t| test_hash.update(t.to_le_bytes()));
                test.push(&ids)?;
                test_docs += 1;
            } else {
                train.push(&ids)?;
                counts.0 += 1;
            }
            *done += text.len() as u64;
        }
        chunk.clear();
        progress("tokenising", *done, total_bytes);
        Ok(())
    };
    for (i, doc) in source.documents()?.enumerate() {
        let doc = doc?;
        if val_set.contains(&i) && val_keys.len() < LISTED {
            val_keys.push(doc.key);
        }
        chunk_bytes += doc.text.len();
        chunk.push((i, doc.text));
        if chunk_bytes >= CHUNK {
            flush(&mut chunk, &mut done)?;
            chunk_bytes = 0;
        }
    }
    flush(&mut chunk, &mut done)?;
    let manifest = DataManifest {
        settings: settings.clone(),
        source_fingerprint: source.fingerprint()?,
        tokenizer_fingerprint: hex(&Sha256::digest(json.as_bytes())),
        tokenizer_content: Some(tokenizer_content(&json)?),
        vocab_size,
        width,
        train_tokens: train.finish()?,
        val_tokens: val.finish()?,
        train_document_count: counts.0,
        val_document_count: counts.1,
        val_documents: val_keys,
        val_fingerprint: hex(&val_hash.finalize()),
        test: test
            .map(|t| -> Result<TestSplit, DataError> {
                Ok(TestSplit {
                    tokens: t.finish()?,
                    document_count: test_docs,
                    fingerprint: hex(&test_hash.finalize()),
                })
            })
            .transpose()?,
    };
    fs::write(tmp.join("tokenizer.json"), json.as_bytes()).map_err(|e| DataError::io(&tmp, e))?;
    let meta = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    fs::write(tmp.join("meta.json"), meta).map_err(|e| DataError::io(&tmp, e))?;
    if fs::rename(&tmp, dir).is_err() {
        // Another process finished first; its cache is identical by construction.
        let _ = fs::remove_dir_all(&tmp);
        if !dir.join("meta.json").exists() {
            return Err(DataError::Corrupt(format!("cannot create the cache folder {}", dir.display())));
        }
    }
    Ok(())
}

/// Text gathered before encoding, and the largest piece encoded at once.
const CHUNK: usize = 8 << 20;
const PIECE: usize = 64 << 10;

/// `text` cut into pieces of about `PIECE` bytes, each cut just after a newline with a
/// non-space character on both sides (`x\n|y`): GPT-2's pre-tokenisation makes that newline a
/// token of its own whether or not the text goes on, so encoding the pieces gives the ids of the
/// whole. (After `\n\n` or `  \n` it would not: a run of white space at the end of a piece
/// becomes one token, where the whole text splits it before its last character.)
fn pieces(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let bytes = rest.as_bytes();
        let mut cut = rest.len();
        if rest.len() > PIECE {
            let mut at = PIECE;
            while at + 1 < bytes.len() {
                if bytes[at - 1] == b'\n'
                    && !bytes[at - 2].is_ascii_whitespace()
                    && !bytes[at].is_ascii_whitespace()
                    && rest.is_char_boundary(at)
                {
                    cut = at;
                    break;
                }
                at += 1;
            }
        }
        let (piece, tail) = rest.split_at(cut);
        rest = tail;
        Some(piece)
    })
}

fn unique() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn settings(dataset: &str, vocab: usize) -> DataSettings {
        DataSettings {
            dataset: dataset.into(),
            vocab_size: vocab,
            val_fraction: 0.1,
            split_seed: 0,
            test_fraction: 0.0,
            tokenizer: "bpe".into(),
            special_tokens: String::new(),
        }
    }

    #[test]
    fn bpe_training_is_deterministic_and_round_trips_text() {
        let texts =
            ["To be, or not to be: that is the question.", "Whether 'tis nobler in the mind to suffer"];
        let a = train_bpe(texts.iter().copied().cycle().take(40), 300, &["<|user|>"]).unwrap();
        let b = train_bpe(texts.iter().copied().cycle().take(40), 300, &["<|user|>"]).unwrap();
        assert_eq!(a.to_string(false).unwrap(), b.to_string(false).unwrap());
        assert_eq!(a.token_to_id(END_OF_TEXT), Some(0));
        assert_eq!(a.token_to_id("<|user|>"), Some(1));
        let ids = a.encode("To be, or not", false).unwrap().get_ids().to_vec();
        assert_eq!(a.decode(&ids, false).unwrap(), "To be, or not");
    }

    #[test]
    fn encoding_in_pieces_gives_the_ids_of_the_whole() {
        let text: String = (0..4000)
            .map(|i| match i % 4 {
                // `\n\n\n` teaches the tokenizer a `\n\n` token; before `[` a careless cut
                // would make one of the `\n\n` that the whole text splits in two.
                0 => format!("ROMEO {i}:\n\n\n"),
                1 => "  But soft, what light through yonder window breaks?\n\n".to_owned(),
                2 => "[It is the east, and Juliet is the sun.]  \n".to_owned(),
                _ => "Arise, fair sun, and kill the envious moon, \u{e9}t\u{e9}.\n".to_owned(),
            })
            .collect();
        let parts: Vec<&str> = pieces(&text).collect();
        assert!(parts.len() > 2 && parts.concat() == text);
        let tokenizer = train_bpe(std::iter::once(text.as_str()), 400, &[]).unwrap();
        let whole = tokenizer.encode_fast(text.as_str(), false).unwrap().get_ids().to_vec();
        let joined: Vec<u32> =
            parts.iter().flat_map(|p| tokenizer.encode_fast(*p, false).unwrap().get_ids().to_vec()).collect();
        assert_eq!(joined, whole);
    }

    #[test]
    fn a_test_split_is_held_out_after_the_validation_documents() {
        let root = tempfile::tempdir().unwrap();
        let plain = PreparedData::prepare(&settings("shakespeare", 512), root.path()).unwrap();
        assert!(plain.test.is_none() && plain.manifest.test.is_none());
        assert!(!plain.dir.join("test.tokens").exists());
        let with_test = DataSettings { test_fraction: 0.1, ..settings("shakespeare", 512) };
        let split = PreparedData::prepare(&with_test, root.path()).unwrap();
        assert_ne!(split.dir, plain.dir, "its own cache");
        // The validation documents are the same with or without a test split (their ids are
        // not: the tokenizer is trained on the training documents only, and the test documents
        // left them); the test documents come out of training.
        assert_eq!(split.manifest.val_documents, plain.manifest.val_documents);
        assert_ne!(split.manifest.tokenizer_fingerprint, plain.manifest.tokenizer_fingerprint);
        let test = split.manifest.test.clone().expect("a test split");
        assert_eq!(test.document_count, 4);
        assert_eq!(
            split.manifest.train_document_count + test.document_count,
            plain.manifest.train_document_count
        );
        assert_eq!(split.test.as_ref().unwrap().len(), test.tokens);
        assert!(test.tokens > split.val.len() / 2 && test.tokens < 2 * split.val.len());
        // Another seed holds out other documents.
        let reseeded =
            PreparedData::prepare(&DataSettings { split_seed: 3, ..with_test.clone() }, root.path()).unwrap();
        assert_ne!(reseeded.manifest.test.unwrap().fingerprint, test.fingerprint);
        // A cache made before test splits existed keys and reads as it did: the settings of a run
        // without one serialise without the field.
        let json = serde_json::to_value(settings("shakespeare", 512)).unwrap();
        assert!(json.get("test_fraction").is_none());
    }

    #[test]
    fn prepared_data_is_cached_and_reloaded_unchanged() {
        let root = tempfile::tempdir().unwrap();
        let first = PreparedData::prepare(&settings("shakespeare", 512), root.path()).unwrap();
        assert!(first.manifest.vocab_size <= 512 && first.manifest.vocab_size > 256);
        assert_eq!(first.manifest.val_document_count, 4);
        assert_eq!(first.manifest.train_document_count, 38);
        assert!(first.train.len() > 10 * first.val.len() / 2);
        assert!(first.train.to_vec().iter().all(|&t| (t as usize) < first.manifest.vocab_size));
        let again = PreparedData::prepare(&settings("shakespeare", 512), root.path()).unwrap();
        assert_eq!(first.dir, again.dir);
        assert_eq!(first.train.to_vec(), again.train.to_vec());
        // A different setting never reuses the cache.
        let other = PreparedData::prepare(
            &DataSettings { split_seed: 1, ..settings("shakespeare", 512) },
            root.path(),
        )
        .unwrap();
        assert_ne!(first.dir, other.dir);
        // A damaged cache is reported, not used.
        std::fs::write(first.dir.join("train.tokens"), b"LMH").unwrap();
        assert!(PreparedData::load(&first.dir).is_err());
    }
}
