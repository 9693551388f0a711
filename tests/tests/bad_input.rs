//! Bad input gets one line that names the thing and the fix, a non-zero exit, no abort, and
//! nothing already written is lost.

use std::path::Path;

use lmhost_tests::{built, runs, Ran, SMALL_MODEL};

/// Exactly one `error:` line, naming `what` and saying `fix`; no Rust panic reached the user.
fn one_clear_error(ran: &Ran, what: &str, fix: &str) -> String {
    assert!(!ran.success(), "expected a failure");
    assert_eq!(ran.output.status.code(), Some(1), "a clean exit, not an abort");
    let errors = ran.error_lines();
    assert_eq!(errors.len(), 1, "one error line, got: {}", ran.stderr());
    let line = errors[0].clone();
    assert!(line.contains(what), "`{line}` does not name {what}");
    assert!(line.contains(fix), "`{line}` does not say `{fix}`");
    assert!(!ran.stderr().contains("panicked at"), "{}", ran.stderr());
    line
}

fn run(dir: &Path, plugin: &str, extra: &[&str]) -> Ran {
    let mut a = vec!["run", plugin];
    a.extend(SMALL_MODEL);
    a.extend(["steps=6", "eval_every=3", "log_every=1"]);
    a.extend(extra);
    built().lmhost(dir, &a)
}

#[test]
fn a_text_file_named_so_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let fake = dir.path().join("fake.so");
    std::fs::write(&fake, "this is not a library\n").unwrap();
    let ran = run(dir.path(), fake.to_str().unwrap(), &[]);
    one_clear_error(&ran, "fake.so", "cargo build --release --workspace");
    assert!(runs(dir.path()).is_empty(), "nothing trained, nothing written");
}

#[test]
fn a_truncated_library_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(built().plugin("value_norm")).unwrap();
    let cut = dir.path().join("truncated.so");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let ran = run(dir.path(), cut.to_str().unwrap(), &[]);
    one_clear_error(&ran, "truncated.so", "rebuild");
}

#[test]
fn a_plugin_built_against_an_older_plugin_api_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let old = built().plugin("old_api_plugin");
    let ran = run(dir.path(), old.to_str().unwrap(), &[]);
    let line = one_clear_error(&ran, "libold_api_plugin.so", "rebuild the plugin");
    assert!(line.contains("plugin-api 0.0.9") && line.contains("0.1.3"), "{line}");
}

#[test]
fn a_plugin_with_another_layout_is_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let bad = built().plugin("wrong_layout_plugin");
    let ran = run(dir.path(), bad.to_str().unwrap(), &[]);
    let line = one_clear_error(&ran, "libwrong_layout_plugin.so", "rebuild the plugin");
    assert!(line.contains("layout"), "{line}");
    // The full report is kept in a file the line names.
    let report = line.split("full report in ").nth(1).unwrap().split(';').next().unwrap();
    assert!(std::fs::read_to_string(report).unwrap().lines().count() > 20);
}

#[test]
fn a_missing_plugin_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run(dir.path(), "plugins/nothing_here.so", &[]);
    one_clear_error(&ran, "plugins/nothing_here.so", "cargo build --release --workspace");
}

#[test]
fn a_plugin_that_panics_fails_its_arm_and_keeps_the_baseline() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = built().plugin("faulty_plugin");
    // Every micro-batch is two data-parallel shards, two forward calls at once (`kit::shards`):
    // call 1 counts the model's FLOPs, calls 2–5 are the step-0 evaluation (16 windows in
    // micro-batches of 8), calls 6–9 train steps 1 and 2; step 3's shards (calls 10 and 11, in
    // either order) panic.
    let ran = run(dir.path(), faulty.to_str().unwrap(), &["fault=panic_in_forward", "fault_at_call=10"]);
    let line = one_clear_error(&ran, "faulty", "panicked");
    assert!(
        line.contains("injected fault: forward call 10 panics")
            || line.contains("injected fault: forward call 11 panics"),
        "{line}"
    );
    let runs = runs(dir.path());
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].status(), "finished");
    assert_eq!(runs[0].stats().rows.len(), 6 + 3);
    assert_eq!(runs[1].status(), "failed");
    let kept: Vec<u64> = runs[1].stats().split(reports::Split::Train).map(|r| r.step).collect();
    assert_eq!(kept, [1, 2]);
    let log = std::fs::read_to_string(runs[1].path.join("worker.log")).unwrap();
    assert!(log.contains("injected fault"), "the worker's own log keeps the details: {log}");
}

#[test]
fn a_plugin_that_returns_nan_is_marked_diverged() {
    let dir = tempfile::tempdir().unwrap();
    let faulty = built().plugin("faulty_plugin");
    let ran = run(dir.path(), faulty.to_str().unwrap(), &["fault=nan_loss", "fault_at_call=10"]);
    let line = one_clear_error(&ran, "faulty", "NaN at step 3");
    assert!(line.contains("diverged"), "{line}");
    let runs = runs(dir.path());
    assert_eq!(runs[0].status(), "finished");
    assert_eq!(runs[1].status(), "diverged");
    let train: Vec<(u64, f64)> =
        runs[1].stats().split(reports::Split::Train).map(|r| (r.step, r.loss.unwrap())).collect();
    assert_eq!(train.len(), 3);
    assert!(train[0].1.is_finite() && train[1].1.is_finite() && train[2].1.is_nan(), "{train:?}");
}

#[test]
fn config_mistakes_are_caught_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let value_norm = built().plugin("value_norm");
    let vn = value_norm.to_str().unwrap();
    let cases: &[(&[&str], &str, &str)] = &[
        (&["run", "baseline", "n_layres=2"], "n_layres", "did you mean `n_layer`?"),
        (&["run", "baseline", "--preset", "tiyn"], "tiyn", "did you mean `tiny`?"),
        (&["run", "baseline", "n_layer=two"], "n_layer=two", "expected a non-negative integer"),
        (&["run", "baseline", "schedule=cosin"], "schedule=cosin", "constant, cosine, linear"),
        (
            &["run", "baseline", "batch_size=6", "micro_batch_size=4"],
            "batch_size (6)",
            "must divide by micro_batch_size",
        ),
        (&["run", vn, "variant=normv9"], "normv9", "normv1_0, normv1_1, normv1_2"),
        (&["run", vn, "value_norm_blocks=some"], "value_norm_blocks=some", "all, from1, first"),
        (&["run", "baseline", "n_embd=30", "n_head=4"], "n_embd (30)", "must divide by n_head"),
        (&["run", "baseline", "device=cuda:0"], "cuda:0", "--features lmhost/cuda"),
        (&["run", "baseline", "dataset=wikitext"], "wikitext", "shakespeare"),
        (&["run", "baseline", "lr"], "`lr`", "key=value"),
    ];
    for (args, what, fix) in cases {
        let ran = built().lmhost(dir.path(), args);
        one_clear_error(&ran, what, fix);
        assert!(runs(dir.path()).is_empty(), "a rejected config writes no run: {args:?}");
    }
}

#[test]
fn a_key_only_the_experiment_knows_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let value_norm = built().plugin("value_norm");
    let ran = run(dir.path(), value_norm.to_str().unwrap(), &["value_norm_blocks=first", "steps=1"]);
    assert!(ran.success(), "{}", ran.stderr());
    let runs = runs(dir.path());
    assert_eq!(runs[1].record["config"]["model"]["value_norm_blocks"], "first");
    assert!(runs[0].record["config"]["model"].get("value_norm_blocks").is_none());
}
