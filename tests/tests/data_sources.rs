//! Training on files other tools wrote: Parquet and Arrow written by pyarrow the way Hugging Face
//! `datasets` writes them (CI installs pyarrow with pip).

use lmhost_tests::{built, runs, SMALL_MODEL};

const WRITE: &str = r#"
import sys, pyarrow as pa, pyarrow.parquet as pq, pyarrow.ipc as ipc
out = sys.argv[1]
words = ["alpha", "beta", "gamma", "delta", "ember", "forest", "granite", "harbor"]
rows = [" ".join(words[(i * 3 + j) % 8] for j in range(300)) + "." for i in range(40)]
table = pa.table({"id": list(range(40)), "content": rows})
pq.write_table(table, f"{out}/train-00000-of-00001.parquet", row_group_size=16)
# save_to_disk writes data-*.arrow as Arrow IPC streams, large_string columns included
big = pa.table({"content": pa.array(rows, type=pa.large_string())})
with ipc.new_stream(f"{out}/data-00000-of-00001.arrow", big.schema) as w:
    w.write_table(big, max_chunksize=10)
"#;

#[test]
fn parquet_and_arrow_files_from_pyarrow_train_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let py = std::process::Command::new("python3").args(["-c", WRITE]).arg(dir.path()).output().unwrap();
    assert!(py.status.success(), "pyarrow (pip install pyarrow): {}", String::from_utf8_lossy(&py.stderr));
    for (spec, n) in [("parquet:{}/*.parquet#content", 0), ("arrow:{}#content", 1)] {
        let dataset = format!("dataset={}", spec.replace("{}", &dir.path().display().to_string()));
        let mut args = vec!["run", "baseline", "steps=2", "vocab_size=300", &dataset];
        args.extend(SMALL_MODEL);
        let ran = built().lmhost(dir.path(), &args);
        assert!(ran.success(), "{spec}: {}", ran.stderr());
        let run = &runs(dir.path())[n];
        assert_eq!(run.status(), "finished");
        let manifest = &run.record["data"]["manifest"];
        assert_eq!(
            manifest["train_document_count"].as_u64().unwrap()
                + manifest["val_document_count"].as_u64().unwrap(),
            40,
            "one document per row"
        );
        assert!(manifest["val_documents"][0].as_str().unwrap().contains(" row "));
    }
    let wrong = built().lmhost(
        dir.path(),
        &["run", "baseline", "steps=2", &format!("dataset=parquet:{}#text", dir.path().display())],
    );
    assert!(!wrong.success());
    assert!(wrong.stderr().contains("has no column `text`; it has id, content"), "{}", wrong.stderr());
}
