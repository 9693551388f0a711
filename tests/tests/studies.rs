//! Studies end to end, on micro models: `lmhost tune` picks each arm's learning rate on val and
//! reports best against best on test; `lmhost ladder` trains four sizes and fits a law per arm;
//! `lmhost compare` on either folder writes the same report again; both emit Slurm arrays.

use std::path::Path;
use std::process::Command;

use lmhost_tests::{built, only_folder, run_folders, SMALL_MODEL};
use serde_json::Value;

fn report_json(dir: &Path, stdout: &str) -> Value {
    let report = stdout.lines().find_map(|l| l.strip_prefix("report: ")).expect("a report line");
    let path = dir.join(report).with_file_name("report.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_tune_picks_each_arms_lr_on_val_and_reports_best_against_best_on_test() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = built().plugin("value_norm");
    let mut args = vec!["tune", plugin.to_str().unwrap()];
    args.extend(SMALL_MODEL);
    args.extend(["steps=4", "eval_every=4", "log_every=4", "lr=1e-3,3e-3,9e-3", "seeds=2"]);
    let ran = built().lmhost(dir.path(), &args);
    assert!(ran.success(), "{}", ran.stderr());
    let out = ran.stdout();
    let numbers = report_json(dir.path(), &out);
    assert_eq!(numbers["kind"], "tune");
    assert_eq!(numbers["key"], "lr");
    let arms = numbers["arms"].as_array().unwrap();
    assert_eq!(
        arms.iter().map(|a| a["label"].as_str().unwrap()).collect::<Vec<_>>(),
        ["baseline", "value_norm/normv1_0"]
    );
    for arm in arms {
        // The pick is the grid point with the lowest mean validation loss, whatever the test says.
        let grid = arm["grid"].as_array().unwrap();
        assert_eq!(grid.len(), 3);
        assert!(grid.iter().all(|p| p["n"] == 2 && p["test_loss_mean"].is_number()));
        let best = grid
            .iter()
            .min_by(|a, b| {
                a["val_loss_mean"].as_f64().unwrap().total_cmp(&b["val_loss_mean"].as_f64().unwrap())
            })
            .unwrap();
        assert_eq!(arm["picked"], best["value"], "{arm}");
        let edge = match grid.iter().position(|p| p == best) {
            Some(0) => Value::from("lowest"),
            Some(2) => Value::from("highest"),
            _ => Value::Null,
        };
        assert_eq!(arm["edge"], edge);
    }
    // Best against best is on test: the experiment's summary is its picked runs' test loss.
    let summaries = numbers["best_vs_best"].as_array().unwrap();
    assert!(summaries.iter().all(|s| s["split"] == "test"));
    let picked_test =
        arms[1]["grid"].as_array().unwrap().iter().find(|p| p["value"] == arms[1]["picked"]).unwrap()
            ["test_loss_mean"]
            .as_f64()
            .unwrap();
    assert!((summaries[1]["loss_mean"].as_f64().unwrap() - picked_test).abs() < 1e-9);
    assert!(summaries[1]["p_value"].is_number(), "paired across two seeds: {}", summaries[1]);
    let folder = only_folder(dir.path(), "tune-value_norm-lr-");
    assert_eq!(run_folders(&folder).len(), 12, "3 lrs × 2 seeds × 2 arms");
    assert!(out.contains("tune: baseline: best lr=") && out.contains("final test loss"), "{out}");

    // Started again, the tune trains nothing; compare on its folder writes the same numbers.
    let again = built().lmhost(dir.path(), &args);
    assert!(again.success(), "{}", again.stderr());
    assert_eq!(again.stdout().matches(" reusing ").count(), 12);
    assert_eq!(run_folders(&folder).len(), 12);
    let compared = built().lmhost(dir.path(), &["compare", folder.to_str().unwrap(), "--out", "again"]);
    assert!(compared.success(), "{}", compared.stderr());
    let renumbered: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("again/report.json")).unwrap())
            .unwrap();
    assert_eq!(renumbered["arms"], numbers["arms"]);
    let md = std::fs::read_to_string(dir.path().join("again/report.md")).unwrap();
    assert!(md.contains("## Best against best, on the test split") && md.contains("★ best on val"), "{md}");

    // The Slurm array: one task per run, and a last job that runs the tune again to report.
    let mut emit = args.clone();
    emit.extend(["--emit", "slurm", "--out", "tune.sh"]);
    let ran = built().lmhost(dir.path(), &emit);
    assert!(ran.success(), "{}", ran.stderr());
    let script = std::fs::read_to_string(dir.path().join("tune.sh")).unwrap();
    assert!(script.contains("#SBATCH --array=0-11\n"), "{script}");
    assert!(script.contains("exec \"$LMHOST\" tune ") && script.contains("lr=1e-3,3e-3,9e-3"), "{script}");
    assert!(Command::new("bash").arg("-n").arg(dir.path().join("tune.sh")).status().unwrap().success());
}

#[test]
fn bad_study_requests_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = built().plugin("value_norm");
    let ran = built().lmhost(dir.path(), &["tune", plugin.to_str().unwrap(), "lr=1e-3,2e-3", "warmup=1,2"]);
    assert_eq!(ran.error_lines().len(), 1, "{}", ran.stderr());
    assert!(ran.stderr().contains("a tune tunes one key, and lr, warmup are lists"), "{}", ran.stderr());
    let ran = built().lmhost(dir.path(), &["ladder", plugin.to_str().unwrap(), "sizes=1,2"]);
    assert!(ran.stderr().contains("at least three sizes"), "{}", ran.stderr());
    let ran = built().lmhost(dir.path(), &["ladder", plugin.to_str().unwrap(), "steps=5"]);
    assert!(ran.stderr().contains("steps= is the ladder's to set"), "{}", ran.stderr());
    assert!(!dir.path().join("runs").exists(), "nothing written");
}

#[test]
fn a_ladder_fits_a_law_per_arm_and_reports_the_compute_multiplier() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = built().plugin("unified_embeddings");
    let args = [
        "ladder",
        plugin.to_str().unwrap(),
        "sizes=1,2,3,4",
        "width_per_layer=16",
        "head_dim=16",
        "tokens_per_param=0.02",
        "context_length=32",
        "eval_windows=16",
        "seeds=2",
    ];
    let ran = built().lmhost(dir.path(), &args);
    assert!(ran.success(), "{}", ran.stderr());
    let out = ran.stdout();
    assert!(out.contains("ladder: size 4×64 (4 heads): "), "{out}");
    let numbers = report_json(dir.path(), &out);
    assert_eq!(numbers["kind"], "ladder");
    let sizes = numbers["study"]["sizes"].as_array().unwrap();
    assert_eq!(sizes.len(), 4);
    // Tokens ∝ parameters: steps grow with the baseline's parameter count.
    let steps: Vec<u64> = sizes.iter().map(|s| s["steps"].as_u64().unwrap()).collect();
    assert!(steps.windows(2).all(|w| w[0] < w[1]), "{steps:?}");
    for arm in numbers["arms"].as_array().unwrap() {
        let law = &arm["fit"]["law"];
        assert!(law["a"].as_f64().unwrap() > 0.0 && law["alpha"].as_f64().unwrap() > 0.0, "{arm}");
        assert!(law["e"].as_f64().unwrap() >= 0.0);
        let alpha95 = arm["fit"]["alpha95"].as_array().unwrap();
        assert!(alpha95[0].as_f64().unwrap() <= alpha95[1].as_f64().unwrap());
        assert_eq!(arm["points"].as_array().unwrap().len(), 4);
    }
    let multipliers = numbers["multipliers"].as_array().unwrap();
    assert_eq!(multipliers.len(), 5, "each size and the extrapolation");
    assert_eq!(multipliers.iter().filter(|m| m["extrapolation"] == true).count(), 1);
    assert!(multipliers.iter().all(|m| m["multiplier"].as_f64().is_some_and(|x| x > 0.0)), "{multipliers:?}");
    let folder = only_folder(dir.path(), "ladder-unified_embeddings-");
    assert_eq!(run_folders(&folder).len(), 16, "4 sizes × 2 seeds × 2 arms");
    let compared = built().lmhost(dir.path(), &["compare", folder.to_str().unwrap(), "--out", "again"]);
    assert!(compared.success(), "{}", compared.stderr());
    let md = std::fs::read_to_string(dir.path().join("again/report.md")).unwrap();
    assert!(md.contains("| 10× the largest (extrapolation) |") && md.contains("## Scaling laws"), "{md}");
    assert!(dir.path().join("again/ladder.png").is_file());
}
