//! Where documents come from, written as one string (the `dataset` knob):
//!
//! | spec | documents |
//! | --- | --- |
//! | `shakespeare` | the embedded corpus, one per work |
//! | `text:PATH` | `.txt` files (a file, a folder, or a glob), one per file (a file over 4 MiB: one per MiB, cut at a line) |
//! | `jsonl:PATH#field` | JSON lines, one per line, the text in `field` (default `text`) |
//! | `parquet:PATH#column` | Parquet files as Hugging Face `datasets` writes them, one per row (default column `text`) |
//! | `arrow:PATH#column` | Arrow files of a `datasets` cache or `save_to_disk` folder, one per row |
//! | `hub:OWNER/NAME:GLOB#column` | a Hugging Face Hub dataset's Parquet files (default glob `*.parquet` on the file path), downloaded once; needs the `hub` feature and a network |
//!
//! Documents are read as a stream: a corpus larger than memory goes through one document at a
//! time. A source's fingerprint hashes every byte it reads, so a changed file never reuses a cache.

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use arrow_array::{Array, LargeStringArray, RecordBatch, StringArray};
use sha2::{Digest, Sha256};

use crate::corpus::{hex, Corpus};
use crate::DataError;

/// One document: a key that names it (its file, line or row) and its text.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub key: String,
    pub text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Embedded(String),
    Text(String),
    Jsonl { pattern: String, field: String },
    Parquet { pattern: String, column: String },
    Arrow { pattern: String, column: String },
    Hub { repo: String, pattern: String, column: String },
}

impl std::str::FromStr for Source {
    type Err = DataError;

    fn from_str(spec: &str) -> Result<Self, DataError> {
        let Some((kind, rest)) = spec.split_once(':') else {
            return match spec {
                "shakespeare" => Ok(Source::Embedded(spec.to_owned())),
                other => Err(DataError::UnknownDataset(other.to_owned())),
            };
        };
        let (pattern, named) = match rest.rsplit_once('#') {
            Some((p, n)) => (p.to_owned(), Some(n.to_owned())),
            None => (rest.to_owned(), None),
        };
        let name = || named.clone().unwrap_or_else(|| "text".to_owned());
        match kind {
            "text" => Ok(Source::Text(pattern)),
            "jsonl" => Ok(Source::Jsonl { pattern, field: name() }),
            "parquet" => Ok(Source::Parquet { pattern, column: name() }),
            "arrow" => Ok(Source::Arrow { pattern, column: name() }),
            "hub" => {
                let (repo, glob) = pattern.split_once(':').unwrap_or((&pattern, "*.parquet"));
                Ok(Source::Hub { repo: repo.to_owned(), pattern: glob.to_owned(), column: name() })
            }
            _ => Err(DataError::UnknownDataset(spec.to_owned())),
        }
    }
}

/// A stream of documents.
pub type Documents<'a> = Box<dyn Iterator<Item = Result<Document, DataError>> + Send + 'a>;

impl Source {
    fn extension(&self) -> &'static str {
        match self {
            Source::Embedded(_) | Source::Text(_) => "txt",
            Source::Jsonl { .. } => "jsonl",
            Source::Parquet { .. } | Source::Hub { .. } => "parquet",
            Source::Arrow { .. } => "arrow",
        }
    }

    /// The files a source reads, sorted: a file, every matching file under a folder, or a glob.
    pub fn files(&self) -> Result<Vec<PathBuf>, DataError> {
        let pattern = match self {
            Source::Embedded(_) => return Ok(Vec::new()),
            Source::Hub { repo, pattern, .. } => return hub_files(repo, pattern),
            Source::Text(p)
            | Source::Jsonl { pattern: p, .. }
            | Source::Parquet { pattern: p, .. }
            | Source::Arrow { pattern: p, .. } => p,
        };
        let path = Path::new(pattern);
        let mut files = if path.is_dir() {
            let mut found = Vec::new();
            collect(path, self.extension(), &mut found).map_err(|e| DataError::io(path, e))?;
            found
        } else if pattern.contains(['*', '?', '[']) {
            glob::glob(pattern)
                .map_err(|e| DataError::Source(format!("`{pattern}` is not a valid pattern: {e}")))?
                .filter_map(Result::ok)
                .filter(|p| p.is_file())
                .collect()
        } else if path.is_file() {
            vec![path.to_owned()]
        } else {
            return Err(DataError::Source(format!("{pattern}: no such file or folder")));
        };
        files.sort();
        if files.is_empty() {
            return Err(DataError::Source(format!("{pattern} holds no .{} files", self.extension())));
        }
        Ok(files)
    }

    /// sha256 over what the source is and every byte of every file it reads.
    pub fn fingerprint(&self) -> Result<String, DataError> {
        if let Source::Embedded(name) = self {
            return Ok(Corpus::named(name)?.fingerprint);
        }
        let mut h = Sha256::new();
        h.update(format!("{self:?}"));
        let mut buf = vec![0u8; 1 << 20];
        for file in self.files()? {
            let mut f = File::open(&file).map_err(|e| DataError::io(&file, e))?;
            h.update(file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
            loop {
                let n = f.read(&mut buf).map_err(|e| DataError::io(&file, e))?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
        }
        Ok(hex(&h.finalize()))
    }

    /// Every document, in a fixed order.
    pub fn documents(&self) -> Result<Documents<'static>, DataError> {
        let files = self.files()?;
        Ok(match self.clone() {
            Source::Embedded(name) => Box::new(
                Corpus::named(&name)?.documents.into_iter().map(|d| Ok(Document { key: d.id, text: d.text })),
            ),
            Source::Text(_) => Box::new(files.into_iter().flat_map(text_file)),
            Source::Jsonl { field, .. } => {
                Box::new(files.into_iter().flat_map(move |f| jsonl(f, field.clone())))
            }
            Source::Parquet { column, .. } | Source::Hub { column, .. } => {
                Box::new(files.into_iter().flat_map(move |f| rows(f, column.clone(), parquet_batches)))
            }
            Source::Arrow { column, .. } => {
                Box::new(files.into_iter().flat_map(move |f| rows(f, column.clone(), arrow_batches)))
            }
        })
    }
}

/// Downloads (once, into the Hugging Face cache) the files of dataset `repo` whose path matches
/// `pattern`.
#[cfg(feature = "hub")]
fn hub_files(repo: &str, pattern: &str) -> Result<Vec<PathBuf>, DataError> {
    use hf_hub::{api::sync::Api, Repo, RepoType};
    let fail = |e: &dyn std::fmt::Display| DataError::Source(format!("hub:{repo}: {e}"));
    let glob = glob::Pattern::new(pattern).map_err(|e| fail(&e))?;
    let api = Api::new().map_err(|e| fail(&e))?;
    let hub = api.repo(Repo::new(repo.to_owned(), RepoType::Dataset));
    let info = hub.info().map_err(|e| fail(&e))?;
    let mut names: Vec<String> =
        info.siblings.into_iter().map(|s| s.rfilename).filter(|f| glob.matches(f)).collect();
    names.sort();
    if names.is_empty() {
        return Err(fail(&format!("no file matches `{pattern}` (give one with hub:{repo}:GLOB)")));
    }
    names.iter().map(|f| hub.get(f).map_err(|e| fail(&e))).collect()
}

#[cfg(not(feature = "hub"))]
fn hub_files(repo: &str, _: &str) -> Result<Vec<PathBuf>, DataError> {
    Err(DataError::Source(format!(
        "hub:{repo} needs the `hub` feature: build with `cargo build --release --workspace --features lmhost/hub`, or download the Parquet files and use parquet:PATH"
    )))
}

/// The files of a folder source, every level down; an lmhost run folder (one with a `run.json`:
/// its stats and checkpoints are not data) is left out.
fn collect(dir: &Path, extension: &str, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            if !path.join("run.json").is_file() {
                collect(&path, extension, out)?;
            }
        } else if path.extension().is_some_and(|e| e == extension) {
            out.push(path);
        }
    }
    Ok(())
}

/// A large text file is read a piece at a time: files over `WHOLE` bytes become documents of
/// about `PIECE` bytes each, cut at line ends, so no whole file sits in memory and a single big
/// file can still be split for validation.
const WHOLE: u64 = 4 << 20;
const PIECE: usize = 1 << 20;

fn text_file(file: PathBuf) -> Documents<'static> {
    let size = match std::fs::metadata(&file) {
        Ok(m) => m.len(),
        Err(e) => return Box::new(std::iter::once(Err(DataError::io(&file, e)))),
    };
    if size <= WHOLE {
        let text = std::fs::read_to_string(&file).map_err(|e| DataError::io(&file, e));
        return Box::new(std::iter::once(
            text.map(|text| Document { key: file.display().to_string(), text }),
        ));
    }
    let mut reader = match File::open(&file) {
        Ok(f) => BufReader::new(f),
        Err(e) => return Box::new(std::iter::once(Err(DataError::io(&file, e)))),
    };
    let mut piece = 0usize;
    Box::new(std::iter::from_fn(move || {
        let mut text = String::with_capacity(PIECE + 4096);
        while text.len() < PIECE {
            match reader.read_line(&mut text) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => return Some(Err(DataError::io(&file, e))),
            }
        }
        if text.is_empty() {
            return None;
        }
        piece += 1;
        Some(Ok(Document { key: format!("{}#{piece}", file.display()), text }))
    }))
}

fn jsonl(file: PathBuf, field: String) -> Documents<'static> {
    let reader = match File::open(&file) {
        Ok(f) => BufReader::new(f),
        Err(e) => return Box::new(std::iter::once(Err(DataError::io(&file, e)))),
    };
    Box::new(
        reader.lines().enumerate().filter(|(_, l)| l.as_ref().map_or(true, |l| !l.trim().is_empty())).map(
            move |(i, line)| {
                let at = || format!("{} line {}", file.display(), i + 1);
                let line = line.map_err(|e| DataError::Corrupt(format!("{}: {e}", at())))?;
                let value: serde_json::Value =
                    serde_json::from_str(&line).map_err(|e| DataError::Corrupt(format!("{}: {e}", at())))?;
                let text = value.get(&field).and_then(|v| v.as_str()).ok_or_else(|| {
                    DataError::Source(format!(
                        "{} has no string field `{field}` (choose one with jsonl:PATH#field)",
                        at()
                    ))
                })?;
                Ok(Document { key: at(), text: text.to_owned() })
            },
        ),
    )
}

type Batches = Box<dyn Iterator<Item = Result<RecordBatch, String>> + Send>;

fn parquet_batches(file: &Path) -> Result<Batches, String> {
    let f = File::open(file).map_err(|e| e.to_string())?;
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .and_then(|b| b.with_batch_size(256).build())
        .map_err(|e| e.to_string())?;
    Ok(Box::new(reader.map(|b| b.map_err(|e| e.to_string()))))
}

/// `datasets` writes its cache and `save_to_disk` files as Arrow IPC streams.
fn arrow_batches(file: &Path) -> Result<Batches, String> {
    let f = BufReader::new(File::open(file).map_err(|e| e.to_string())?);
    match arrow_ipc::reader::StreamReader::try_new(f, None) {
        Ok(reader) => Ok(Box::new(reader.map(|b| b.map_err(|e| e.to_string())))),
        Err(_) => {
            let f = File::open(file).map_err(|e| e.to_string())?;
            let reader = arrow_ipc::reader::FileReader::try_new(f, None)
                .map_err(|e| format!("not an Arrow stream or file: {e}"))?;
            Ok(Box::new(reader.map(|b| b.map_err(|e| e.to_string()))))
        }
    }
}

/// Each row of `column` in a file of record batches, as a document.
fn rows(file: PathBuf, column: String, open: fn(&Path) -> Result<Batches, String>) -> Documents<'static> {
    let batches = match open(&file) {
        Ok(b) => b,
        Err(e) => {
            return Box::new(std::iter::once(Err(DataError::Corrupt(format!("{}: {e}", file.display())))))
        }
    };
    let mut row = 0usize;
    Box::new(batches.flat_map(move |batch| -> Vec<Result<Document, DataError>> {
        let shown = file.display().to_string();
        let batch = match batch {
            Ok(b) => b,
            Err(e) => return vec![Err(DataError::Corrupt(format!("{shown}: {e}")))],
        };
        let Some(col) = batch.column_by_name(&column) else {
            let names: Vec<String> = batch.schema().fields().iter().map(|f| f.name().clone()).collect();
            return vec![Err(DataError::Source(format!(
                "{shown} has no column `{column}`; it has {}",
                names.join(", ")
            )))];
        };
        let texts: Vec<Option<String>> = if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
            (0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i).to_owned())).collect()
        } else if let Some(a) = col.as_any().downcast_ref::<LargeStringArray>() {
            (0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i).to_owned())).collect()
        } else {
            return vec![Err(DataError::Source(format!(
                "{shown}: column `{column}` is {}, not text",
                col.data_type()
            )))];
        };
        texts
            .into_iter()
            .map(|text| {
                row += 1;
                Ok(Document { key: format!("{shown} row {row}"), text: text.unwrap_or_default() })
            })
            .collect()
    }))
}
