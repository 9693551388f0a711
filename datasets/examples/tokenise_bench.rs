//! Tokenising throughput and peak memory on a generated corpus:
//! `cargo run --release -p datasets --example tokenise_bench -- [MB] [VOCAB]` (default 200 MB, 8192).
//!
//! Writes one text file of MB megabytes (lines of the embedded corpus in a shuffled order) under
//! `target/tokenise-bench/`, then times the whole preparation (validation split, BPE training,
//! tokenising both splits to disk) and prints MB/s and this process's peak resident memory.

use std::io::Write;
use std::time::Instant;

use datasets::{Corpus, DataSettings, PreparedData};

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1));
    kb.and_then(|k| k.parse::<f64>().ok()).unwrap_or(f64::NAN) / 1024.0
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mb: u64 = args.next().map(|a| a.parse().expect("MB")).unwrap_or(200);
    let vocab: usize = args.next().map(|a| a.parse().expect("VOCAB")).unwrap_or(8192);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/tokenise-bench");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();

    let corpus = Corpus::named("shakespeare").unwrap();
    let lines: Vec<&str> = corpus.documents.iter().flat_map(|d| d.text.lines()).collect();
    let file = root.join("corpus.txt");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file).unwrap());
    let (mut written, mut state) = (0u64, 0x9e37_79b9_7f4a_7c15u64);
    while written < mb << 20 {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let line = lines[(state % lines.len() as u64) as usize];
        out.write_all(line.as_bytes()).unwrap();
        out.write_all(b"\n").unwrap();
        written += line.len() as u64 + 1;
    }
    out.flush().unwrap();
    drop(out);
    let rss_before = peak_rss_mb();

    let settings = DataSettings {
        dataset: format!("text:{}", file.display()),
        vocab_size: vocab,
        val_fraction: 0.01,
        split_seed: 0,
        test_fraction: 0.0,
        tokenizer: "bpe".into(),
        special_tokens: String::new(),
    };
    let t0 = Instant::now();
    let trained = PreparedData::prepare(&settings, &root.join("cache")).unwrap();
    let bpe_total = t0.elapsed().as_secs_f64();
    // Again with the trained tokenizer given: tokenising alone.
    let given = DataSettings { tokenizer: trained.tokenizer_path().display().to_string(), ..settings };
    let t1 = Instant::now();
    let tokenised = PreparedData::prepare(&given, &root.join("cache")).unwrap();
    let encode_only = t1.elapsed().as_secs_f64();
    let size = written as f64 / (1 << 20) as f64;
    println!(
        "corpus: {size:.0} MB in one file, {} pieces; tokens: {} train + {} val (vocab {})",
        tokenised.manifest.train_document_count + tokenised.manifest.val_document_count,
        tokenised.manifest.train_tokens,
        tokenised.manifest.val_tokens,
        tokenised.manifest.vocab_size
    );
    println!("train BPE + tokenise: {bpe_total:.1} s = {:.1} MB/s", size / bpe_total);
    println!("tokenise only (given tokenizer.json): {encode_only:.1} s = {:.1} MB/s", size / encode_only);
    println!(
        "peak RSS: {:.0} MB (before preparing: {rss_before:.0} MB; the corpus is {size:.0} MB)",
        peak_rss_mb()
    );
    let _ = std::fs::remove_dir_all(&root);
}
