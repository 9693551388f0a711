//! `lmhost run` on a real plugin library: both arms train in their own worker processes on the
//! embedded corpus with the same seed, data order and budget, and leave run folders whose
//! stats pyarrow can read.

use lmhost_tests::{built, runs};

#[test]
fn value_norm_and_the_baseline_train_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = built().plugin("value_norm");
    let ran = built().lmhost(
        dir.path(),
        &[
            "run",
            plugin.to_str().unwrap(),
            "--preset",
            "tiny",
            "steps=30",
            "eval_every=10",
            "eval_windows=16",
            "log_every=5",
        ],
    );
    assert!(ran.success(), "{}", ran.stderr());
    let out = ran.stdout();
    // Greppable progress, then the comparison table.
    assert!(out.contains("arm:baseline step:10/30 loss:"), "{out}");
    assert!(out.contains("arm:value_norm step:30/30 loss:"), "{out}");
    assert!(out.contains(" tok/s:") && out.contains(" eta:"), "{out}");
    assert!(out.contains("val loss difference (value_norm − baseline)"), "{out}");

    let runs = runs(dir.path());
    assert_eq!(runs.iter().map(|r| r.arm()).collect::<Vec<_>>(), ["baseline", "experiment"]);
    for run in &runs {
        assert_eq!(run.status(), "finished");
        let stats = run.stats();
        assert!(stats.finished && stats.torn.is_none());
        let train: Vec<f64> = stats.split(reports::Split::Train).map(|r| r.loss.unwrap()).collect();
        assert_eq!(train.len(), 30);
        assert!(train.iter().all(|l| l.is_finite()));
        let val = run.val_losses();
        assert_eq!(val.len(), 4, "evaluated at steps 0, 10, 20, 30");
        assert!(val[3] < val[0] - 1.0, "{} arm did not learn: {val:?}", run.arm());
        assert!(run.path.join("checkpoints/step_000030.safetensors").is_file());
        let r = &run.record;
        assert_eq!(r["config"]["run"]["seed"], 1);
        assert_eq!(r["config"]["model"]["n_layer"], 4);
        assert_eq!(r["derived"]["tokens_per_step"], 1024);
        assert_eq!(r["result"]["tokens"], 30 * 1024);
        assert!(r["data"]["manifest"]["tokenizer_fingerprint"].as_str().unwrap().len() == 64);
    }
    // Same budget and the same data: both arms saw the same tokens at every step.
    let tokens = |i: usize| runs[i].stats().rows.iter().map(|r| r.tokens).collect::<Vec<_>>();
    assert_eq!(tokens(0), tokens(1));
    let experiment = &runs[1].record;
    assert_eq!(experiment["plugin"]["name"], "value_norm");
    assert_eq!(experiment["plugin"]["variant"], "normv1_0");
    assert_eq!(experiment["plugin"]["sha256"].as_str().unwrap().len(), 64);
    assert_eq!(experiment["config"]["model"]["value_norm_blocks"], "all");

    // pyarrow reads the stats as they are (CI installs it with pip).
    let script = format!(
        "import pyarrow.ipc as ipc\nt = ipc.open_stream(open('{}', 'rb')).read_all()\nprint(t.num_rows, t.column('loss')[0].as_py() > 0, t.schema.metadata[b'lmhost.stats_version'].decode())",
        runs[1].path.join("stats.arrows").display()
    );
    let py = std::process::Command::new("python3").args(["-c", &script]).output().expect("python3");
    assert!(
        py.status.success(),
        "pyarrow could not read stats.arrows (pip install pyarrow): {}",
        String::from_utf8_lossy(&py.stderr)
    );
    let rows = runs[1].stats().rows.len();
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).trim(),
        format!("{rows} True {}", reports::stats::STATS_VERSION)
    );
    // FLOPs: counted per token when the model was built, and every row's are its tokens' worth.
    let per_token = experiment["result"]["flops_per_token"].as_f64().expect("flops_per_token in run.json");
    assert!(per_token > 6.0 * 1e5, "{per_token}");
    for row in runs[1].stats().rows.iter().filter(|r| r.tokens > 0) {
        assert_eq!(row.flops, Some(per_token * row.tokens as f64));
    }
}

/// The README's lines for pandas, polars and DuckDB, run on a finished run's `stats.parquet`:
/// each opens it as it is, and `step` is a signed integer (`step - 10` does not wrap).
#[test]
fn stats_read_in_python() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "baseline", "steps=12", "eval_every=6", "log_every=3"];
    args.extend(lmhost_tests::SMALL_MODEL);
    assert!(built().lmhost(dir.path(), &args).success());
    let run = &runs(dir.path())[0];
    let readme = std::fs::read_to_string(built().workspace_root.join("README.md")).unwrap();
    let block = readme
        .split("```python\n")
        .find(|b| b.contains("read_parquet"))
        .and_then(|b| b.split("```").next())
        .expect("the README shows how to read stats.parquet");
    let id = run.path.strip_prefix(dir.path()).unwrap().file_name().unwrap().to_str().unwrap();
    let script = block.replace("<id>", id)
        + "print(len(val), len(stats))\n"
        + "print(pl.read_parquet('runs/ID/stats.parquet').select((pl.col('step') - 10).min()).item())\n".replace("ID", id).as_str()
        + "print(duckdb.sql(\"select count(*) from 'runs/ID/stats.parquet' where split = 'train'\").fetchall()[0][0])\n".replace("ID", id).as_str();
    let py =
        std::process::Command::new("python3").args(["-c", &script]).current_dir(dir.path()).output().unwrap();
    assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    let out = String::from_utf8_lossy(&py.stdout);
    let lines: Vec<&str> = out.lines().collect();
    let rows = run.stats().rows.len();
    assert_eq!(lines[lines.len() - 3], format!("3 {rows}"), "three evaluations, every row: {out}");
    assert_eq!(lines[lines.len() - 2], "-10", "step 0 minus 10: {out}");
    assert_eq!(lines[lines.len() - 1], "12", "a train row per step: {out}");
}

/// `test_fraction` holds out test documents, evaluated once after the last step; `compare
/// --split test` tests the groups on them, and refuses runs that have none.
#[test]
fn a_test_split_is_evaluated_at_the_end_and_compared_on_request() {
    let dir = tempfile::tempdir().unwrap();
    // A small vocabulary: the held-out documents make a data cache of their own, with its BPE.
    let mut args = vec![
        "run",
        "baseline",
        "steps=4",
        "eval_every=2",
        "test_fraction=0.1",
        "vocab_size=512",
        "--runs-dir",
        "with",
    ];
    args.extend(lmhost_tests::SMALL_MODEL);
    let ran = built().lmhost(dir.path(), &args);
    assert!(ran.success(), "{}", ran.stderr());
    let run = lmhost_tests::run_folders(&dir.path().join("with")).remove(0);
    let stats = run.stats();
    let test: Vec<_> = stats.split(reports::Split::Test).collect();
    assert_eq!(test.len(), 1, "one test evaluation");
    assert_eq!(test[0].step, 4);
    let loss = test[0].loss.unwrap();
    assert_eq!(run.record["result"]["test_loss"].as_f64(), Some(loss));
    let val = *run.val_losses().last().unwrap();
    assert!(loss.is_finite() && (loss - val).abs() > 1e-9, "test {loss} is not the validation loss {val}");
    let path = run.path.to_str().unwrap();
    let compared = built().lmhost(dir.path(), &["compare", path, "--split", "test", "--out", "r"]);
    assert!(compared.success(), "{}", compared.stderr());
    assert!(compared.stdout().contains("final test loss"), "{}", compared.stdout());
    let md = std::fs::read_to_string(dir.path().join("r/report.md")).unwrap();
    assert!(md.contains("Final test loss") && md.contains(&format!("{loss:.4}")), "{md}");

    let mut args = vec!["run", "baseline", "steps=2", "--runs-dir", "without"];
    args.extend(lmhost_tests::SMALL_MODEL);
    assert!(built().lmhost(dir.path(), &args).success());
    let plain = lmhost_tests::run_folders(&dir.path().join("without")).remove(0);
    assert!(plain.stats().split(reports::Split::Test).next().is_none());
    let refused = built()
        .lmhost(dir.path(), &["compare", plain.path.to_str().unwrap(), "--split", "test", "--out", "s"]);
    assert!(!refused.success());
    assert_eq!(refused.error_lines().len(), 1, "{}", refused.stderr());
    assert!(refused.stderr().contains("test_fraction"), "{}", refused.stderr());
}
