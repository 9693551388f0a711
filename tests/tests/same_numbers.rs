//! Reproducibility: the same config and seed give the same numbers on CPU, and training through
//! a plugin library gives exactly what the built-in baseline gives.

use lmhost_tests::{built, runs, RunDir, SMALL_MODEL};

/// Step, tokens, split, loss, accuracy, lr, grad norm.
type Numbers = Vec<(u64, u64, &'static str, Option<f64>, Option<f64>, Option<f64>, Option<f64>)>;

/// Every number of a run that does not depend on timing.
fn numbers(run: &RunDir) -> Numbers {
    run.stats()
        .rows
        .iter()
        .map(|r| (r.step, r.tokens, r.split.as_str(), r.loss, r.accuracy, r.lr, r.grad_norm))
        .collect()
}

fn args<'a>(extra: &[&'a str]) -> Vec<&'a str> {
    let mut a = SMALL_MODEL.to_vec();
    a.extend(["steps=12", "eval_every=4"]);
    a.extend(extra);
    a
}

#[test]
fn the_same_seed_gives_identical_stats() {
    let dir = tempfile::tempdir().unwrap();
    for seed in ["seed=3", "seed=3", "seed=4"] {
        let mut a = vec!["run", "baseline"];
        a.extend(args(&[seed]));
        assert!(built().lmhost(dir.path(), &a).success());
    }
    let runs = runs(dir.path());
    assert_eq!(runs.len(), 3);
    assert_eq!(numbers(&runs[0]), numbers(&runs[1]));
    assert_ne!(numbers(&runs[0]), numbers(&runs[2]));
}

#[test]
fn the_plugin_path_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = built().plugin("kit_baseline");
    let mut a = vec!["run", plugin.to_str().unwrap()];
    a.extend(args(&[]));
    let ran = built().lmhost(dir.path(), &a);
    assert!(ran.success(), "{}", ran.stderr());
    let runs = runs(dir.path());
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0].arm(), "baseline");
    assert_eq!(runs[1].record["plugin"]["name"], "baseline");
    assert_eq!(numbers(&runs[0]), numbers(&runs[1]));
}

#[test]
fn a_matching_finished_baseline_is_reused() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = built().plugin("value_norm");
    let mut a = vec!["run", plugin.to_str().unwrap()];
    a.extend(args(&["steps=2"]));
    assert!(built().lmhost(dir.path(), &a).success());
    let again = built().lmhost(dir.path(), &a);
    assert!(again.success());
    assert!(again.stdout().contains("arm:baseline reusing"), "{}", again.stdout());
    let arms: Vec<String> = runs(dir.path()).iter().map(|r| r.arm().to_owned()).collect();
    assert_eq!(arms.iter().filter(|arm| *arm == "baseline").count(), 1);
    assert_eq!(arms.iter().filter(|arm| *arm == "experiment").count(), 2);
    // The plain kernels round differently: their baseline is trained, not reused, and recorded.
    let plain = built().lmhost_with_env(dir.path(), &a, &[("LMHOST_PLAIN_KERNELS", "1")]);
    assert!(plain.success() && !plain.stdout().contains("reusing"), "{}", plain.stdout());
    let recorded: Vec<_> = runs(dir.path())
        .iter()
        .map(|r| r.record["host"]["numerics_env"]["LMHOST_PLAIN_KERNELS"].clone())
        .collect();
    assert_eq!(recorded.iter().filter(|v| *v == "1").count(), 2, "{recorded:?}");
    // A different config trains a new baseline.
    a.push("lr=3e-4");
    assert!(!built().lmhost(dir.path(), &a).stdout().contains("reusing"));
}

#[test]
fn the_fused_kernels_train_the_model_the_plain_candle_path_trains() {
    let dir = tempfile::tempdir().unwrap();
    let losses = |runs_dir: &str, env: &[(&str, &str)]| {
        let mut a = vec!["run", "baseline", "--runs-dir", runs_dir];
        a.extend(args(&["seed=5"]));
        let ran = built().lmhost_with_env(dir.path(), &a, env);
        assert!(ran.success(), "{}", ran.stderr());
        let run = lmhost_tests::run_folders(&dir.path().join(runs_dir)).remove(0);
        run.stats()
            .rows
            .iter()
            .filter(|r| r.metric.is_none())
            .map(|r| (r.step, r.loss.unwrap()))
            .collect::<Vec<_>>()
    };
    let fused = losses("fused", &[]);
    let plain = losses("plain", &[("LMHOST_PLAIN_KERNELS", "1")]);
    assert_eq!(fused.len(), plain.len());
    for ((step, f), (_, p)) in fused.iter().zip(&plain).filter(|(r, _)| r.0 <= 4) {
        assert!((f - p).abs() < 1e-4 * p, "step {step}: fused {f} vs plain {p}");
    }
}
