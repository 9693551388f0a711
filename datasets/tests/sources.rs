//! Every source format, read from files the tests write themselves, through to a prepared
//! token cache; and the cache's key, which must change whenever anything it depends on does.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{ArrayRef, LargeStringArray, RecordBatch, StringArray};
use datasets::{DataSettings, PreparedData, Source};

/// Distinct, word-rich lines so a small BPE has something to learn.
fn paragraph(i: usize) -> String {
    let words = ["alpha", "beta", "gamma", "delta", "ember", "forest", "granite", "harbor", "island"];
    (0..40).map(|j| words[(i * 7 + j * 3) % words.len()]).collect::<Vec<_>>().join(" ") + ".\n"
}

fn texts(n: usize) -> Vec<String> {
    (0..n).map(paragraph).collect()
}

fn settings(dataset: &str) -> DataSettings {
    DataSettings {
        dataset: dataset.to_owned(),
        vocab_size: 300,
        val_fraction: 0.2,
        split_seed: 0,
        test_fraction: 0.0,
        tokenizer: "bpe".into(),
        special_tokens: String::new(),
    }
}

fn documents(spec: &str) -> Vec<(String, String)> {
    let source: Source = spec.parse().unwrap();
    source.documents().unwrap().map(|d| d.map(|d| (d.key, d.text)).unwrap()).collect()
}

fn first_error(spec: &str) -> String {
    let source: Source = spec.parse().unwrap();
    match source.documents() {
        Err(e) => e.to_string(),
        Ok(mut docs) => docs.find_map(Result::err).expect("an error").to_string(),
    }
}

#[test]
fn text_files_come_from_a_file_a_folder_or_a_glob() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("b/nested")).unwrap();
    for (i, name) in ["a.txt", "b/c.txt", "b/nested/d.txt", "b/skip.md"].iter().enumerate() {
        fs::write(dir.path().join(name), paragraph(i)).unwrap();
    }
    let root = dir.path().display();
    let folder = documents(&format!("text:{root}"));
    assert_eq!(folder.len(), 3, "the .md file is not text: {folder:?}");
    assert_eq!(folder[0].1, paragraph(0));
    assert!(folder[2].0.ends_with("d.txt"));
    assert_eq!(documents(&format!("text:{root}/b/*.txt")).len(), 1);
    assert_eq!(documents(&format!("text:{root}/a.txt")).len(), 1);
    assert!(first_error(&format!("text:{root}/missing")).contains("no such file"));
    assert!(first_error(&format!("text:{root}/*.none")).contains("holds no .txt files"));
}

#[test]
fn a_large_text_file_is_read_in_pieces_cut_at_lines() {
    let dir = tempfile::tempdir().unwrap();
    let line = "the quick brown fox jumps over the lazy dog\n";
    let big = line.repeat((5 << 20) / line.len() + 1);
    fs::write(dir.path().join("big.txt"), &big).unwrap();
    let pieces = documents(&format!("text:{}", dir.path().display()));
    assert!(pieces.len() >= 5, "{} pieces", pieces.len());
    assert!(pieces.iter().all(|(_, t)| t.ends_with('\n') && t.len() <= (1 << 20) + line.len()));
    assert_eq!(pieces.iter().map(|(_, t)| t.as_str()).collect::<String>(), big);
}

#[test]
fn jsonl_reads_the_named_field_and_names_the_bad_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.jsonl");
    let lines: Vec<String> =
        texts(3).iter().map(|t| serde_json::json!({"id": 1, "content": t}).to_string()).collect();
    fs::write(&path, lines.join("\n") + "\n\n").unwrap();
    let docs = documents(&format!("jsonl:{}#content", path.display()));
    assert_eq!(docs.iter().map(|d| d.1.clone()).collect::<Vec<_>>(), texts(3));
    assert!(docs[1].0.ends_with("line 2"));
    let missing = first_error(&format!("jsonl:{}", path.display()));
    assert!(missing.contains("no string field `text`") && missing.contains("line 1"), "{missing}");
    fs::write(&path, format!("{}\n{{not json\n", lines[0])).unwrap();
    assert!(first_error(&format!("jsonl:{}#content", path.display())).contains("line 2"));
}

fn batch(texts: &[String], large: bool) -> RecordBatch {
    let column: ArrayRef = if large {
        Arc::new(LargeStringArray::from_iter_values(texts))
    } else {
        Arc::new(StringArray::from_iter_values(texts))
    };
    let ids: ArrayRef = Arc::new(arrow_array::Int64Array::from_iter_values(0..texts.len() as i64));
    RecordBatch::try_from_iter([("id", ids), ("content", column)]).unwrap()
}

#[test]
fn parquet_rows_are_documents_of_the_named_column() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("train-00000-of-00001.parquet");
    let b = batch(&texts(5), false);
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(fs::File::create(&path).unwrap(), b.schema(), None).unwrap();
    writer.write(&b).unwrap();
    writer.close().unwrap();
    let docs = documents(&format!("parquet:{}#content", dir.path().display()));
    assert_eq!(docs.iter().map(|d| d.1.clone()).collect::<Vec<_>>(), texts(5));
    let wrong = first_error(&format!("parquet:{}", path.display()));
    assert!(wrong.contains("no column `text`; it has id, content"), "{wrong}");
    let wrong = first_error(&format!("parquet:{}#id", path.display()));
    assert!(wrong.contains("not text"), "{wrong}");
    fs::write(&path, b"PAR1 not really").unwrap();
    assert!(first_error(&format!("parquet:{}#content", path.display())).contains("corrupt"));
}

#[test]
fn arrow_files_as_datasets_writes_them_stream_or_file() {
    let dir = tempfile::tempdir().unwrap();
    // save_to_disk: data-0000N-of-0000M.arrow, Arrow IPC streams, large_string columns too.
    for (n, large) in [(0, false), (1, true)] {
        let path = dir.path().join(format!("data-0000{n}-of-00002.arrow"));
        let b = batch(&texts(3)[n..n + 2], large);
        let mut w =
            arrow_ipc::writer::StreamWriter::try_new(fs::File::create(path).unwrap(), &b.schema()).unwrap();
        w.write(&b).unwrap();
        w.finish().unwrap();
    }
    fs::write(dir.path().join("state.json"), "{}").unwrap();
    let docs = documents(&format!("arrow:{}#content", dir.path().display()));
    assert_eq!(docs.len(), 4);
    assert_eq!(docs[2].1, texts(3)[1]);
    // The Arrow IPC file format is read as well.
    let file = dir.path().join("other/x.arrow");
    fs::create_dir_all(file.parent().unwrap()).unwrap();
    let b = batch(&texts(2), false);
    let mut w =
        arrow_ipc::writer::FileWriter::try_new(fs::File::create(&file).unwrap(), &b.schema()).unwrap();
    w.write(&b).unwrap();
    w.finish().unwrap();
    assert_eq!(documents(&format!("arrow:{}#content", file.display())).len(), 2);
}

fn write_corpus(dir: &Path, n: usize) {
    fs::create_dir_all(dir).unwrap();
    for (i, t) in texts(n).iter().enumerate() {
        fs::write(dir.join(format!("doc{i:02}.txt")), t.repeat(20)).unwrap();
    }
}

#[test]
fn the_cache_key_follows_the_data_the_settings_and_the_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let (corpus, cache) = (dir.path().join("corpus"), dir.path().join("cache"));
    write_corpus(&corpus, 10);
    let spec = format!("text:{}", corpus.display());
    let first = PreparedData::prepare(&settings(&spec), &cache).unwrap();
    assert_eq!(first.manifest.train_document_count + first.manifest.val_document_count, 10);
    assert!(first.manifest.val_document_count >= 2);
    assert_eq!(first.manifest.val_documents.len(), first.manifest.val_document_count);
    assert_eq!(PreparedData::prepare(&settings(&spec), &cache).unwrap().dir, first.dir);

    // The same split for the same seed; another seed holds out other documents.
    let again = PreparedData::prepare(&settings(&spec), &dir.path().join("cache2")).unwrap();
    assert_eq!(again.manifest.val_documents, first.manifest.val_documents);
    let reseeded = PreparedData::prepare(&DataSettings { split_seed: 7, ..settings(&spec) }, &cache).unwrap();
    assert_ne!(reseeded.manifest.val_documents, first.manifest.val_documents);

    // One changed byte in one file: a new cache, never the stale one.
    let file = corpus.join("doc03.txt");
    let mut text = fs::read_to_string(&file).unwrap();
    text.replace_range(0..1, "Z");
    fs::write(&file, text).unwrap();
    let edited = PreparedData::prepare(&settings(&spec), &cache).unwrap();
    assert_ne!(edited.dir, first.dir);
    assert_ne!(edited.manifest.source_fingerprint, first.manifest.source_fingerprint);

    // Special tokens change the tokenizer and so the cache; they get the ids after <|endoftext|>.
    let special = PreparedData::prepare(
        &DataSettings { special_tokens: "<|user|> <|bot|>".into(), ..settings(&spec) },
        &cache,
    )
    .unwrap();
    assert_ne!(special.dir, edited.dir);
    let tok = special.tokenizer().unwrap();
    assert_eq!((tok.token_to_id("<|user|>"), tok.token_to_id("<|bot|>")), (Some(1), Some(2)));

    // A given tokenizer.json is used as is, and keyed by its bytes.
    let given = dir.path().join("given.json");
    fs::copy(edited.tokenizer_path(), &given).unwrap();
    let loaded = PreparedData::prepare(
        &DataSettings { tokenizer: given.display().to_string(), ..settings(&spec) },
        &cache,
    )
    .unwrap();
    assert_eq!(loaded.manifest.tokenizer_fingerprint, edited.manifest.tokenizer_fingerprint);
    assert_eq!(loaded.train.to_vec(), edited.train.to_vec());
    let missing = PreparedData::prepare(
        &DataSettings { tokenizer: dir.path().join("nope.json").display().to_string(), ..settings(&spec) },
        &cache,
    );
    assert!(missing.err().unwrap().to_string().contains("nope.json"));
}

#[test]
fn a_corpus_of_one_document_cannot_be_split() {
    let dir = tempfile::tempdir().unwrap();
    write_corpus(&dir.path().join("c"), 1);
    let spec = format!("text:{}", dir.path().join("c").display());
    let err = PreparedData::prepare(&settings(&spec), &dir.path().join("cache")).err().unwrap();
    assert!(err.to_string().contains("needs at least 2"), "{err}");
    let err = "nonsense:x".parse::<Source>().unwrap_err().to_string();
    assert!(err.contains("jsonl:PATH#field"), "{err}");
}

#[test]
fn hub_sources_parse_and_offline_builds_say_how_to_get_them() {
    let source: Source = "hub:roneneldan/TinyStories#text".parse().unwrap();
    assert_eq!(
        source,
        Source::Hub {
            repo: "roneneldan/TinyStories".into(),
            pattern: "*.parquet".into(),
            column: "text".into()
        }
    );
    let narrowed: Source = "hub:a/b:data/train-*.parquet#content".parse().unwrap();
    assert!(
        matches!(narrowed, Source::Hub { ref pattern, ref column, .. } if pattern == "data/train-*.parquet" && column == "content")
    );
    #[cfg(not(feature = "hub"))]
    assert!(first_error("hub:a/b").contains("needs the `hub` feature"));
}
