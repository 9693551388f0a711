//! What a new user runs into, each checked: where reports go, what the first validation row
//! says, how `describe` prints, sweeps that retrain or reuse their baselines, plugin names and
//! files from anywhere, bad values caught before any data is read, keys that only observe, and a
//! tokenizer saved again by `transformers`.

use std::path::Path;

use lmhost_tests::{built, run_folders, runs, SMALL_MODEL};

fn run(dir: &Path, extra: &[&str]) -> lmhost_tests::Ran {
    let mut args = vec!["run"];
    args.extend(extra);
    args.extend(SMALL_MODEL);
    built().lmhost(dir, &args)
}

#[test]
fn reports_go_beside_the_runs_and_the_first_evaluation_has_no_learning_rate() {
    let dir = tempfile::tempdir().unwrap();
    let elsewhere = dir.path().join("exp/runs");
    let ran = run(dir.path(), &["baseline", "steps=2", "--runs-dir", elsewhere.to_str().unwrap()]);
    assert!(ran.success(), "{}", ran.stderr());
    assert!(!dir.path().join("reports").exists(), "nothing written in the current folder");
    let report = ran.stdout().lines().find_map(|l| l.strip_prefix("report: ").map(str::to_owned)).unwrap();
    assert!(Path::new(&report).starts_with(dir.path().join("exp/reports")), "{report}");
    let run = &run_folders(&elsewhere)[0];
    let first = run.stats().rows.into_iter().find(|r| r.split == reports::Split::Val).unwrap();
    assert_eq!((first.step, first.lr), (0, None), "step 0 trained nothing: no learning rate");
}

#[test]
fn describe_prints_every_plugin_as_plain_paragraphs_from_any_folder() {
    let dir = tempfile::tempdir().unwrap(); // outside the checkout: names resolve in lmhost's workspace
    for name in [
        "value_norm",
        "unified_embeddings",
        "unified_weights",
        "reverse_position_attention",
        "simplified_blocks",
        "op_block",
        "mup",
        "latent_attention",
    ] {
        let ran = built().lmhost(dir.path(), &["describe", name]);
        assert!(ran.success(), "{name}: {}", ran.stderr());
        let out = ran.stdout();
        // name, version and summary, then the description paragraph
        let description = out.split("\n\n").nth(1).unwrap_or_default();
        assert!(!out.contains('\\') && !description.contains("  "), "{name}: raw continuations in\n{out}");
    }
}

#[test]
fn a_plugin_file_given_by_its_bare_name_loads() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(built().plugin("value_norm"), dir.path().join("vn.so")).unwrap();
    let ran = built().lmhost(dir.path(), &["describe", "vn.so"]);
    assert!(ran.success() && ran.stdout().starts_with("value_norm "), "{}", ran.stderr());
    assert!(run(dir.path(), &["vn.so", "--no-baseline", "steps=1"]).success());
}

#[test]
fn bad_values_and_bad_places_are_refused_before_any_data_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let nan = built().lmhost(dir.path(), &["run", "baseline", "lr=nan"]);
    assert_eq!(nan.error_lines(), ["error: lr=nan: expected a finite number"]);
    std::fs::write(dir.path().join("plan.toml"), "[[stage]]\nname = 1\n").unwrap();
    std::fs::write(dir.path().join("corpus.txt"), "never tokenised ".repeat(1000)).unwrap();
    let plan = built().lmhost(dir.path(), &["run", "baseline", "plan=plan.toml", "dataset=text:corpus.txt"]);
    assert!(plan.error_lines()[0].contains("plan.toml is malformed"), "{:?}", plan.error_lines());
    assert!(!plan.stdout().contains("data:"), "refused before tokenising: {}", plan.stdout());
    std::fs::write(dir.path().join("a-file"), "").unwrap();
    let place = built()
        .lmhost(dir.path(), &["run", "baseline", "dataset=text:corpus.txt", "--runs-dir", "a-file/runs"]);
    assert!(place.error_lines()[0].contains("runs folder a-file/runs"), "{:?}", place.error_lines());
    assert!(!place.stdout().contains("data:"), "{}", place.stdout());
}

#[test]
fn keys_that_only_observe_change_neither_identity_nor_groups() {
    let dir = tempfile::tempdir().unwrap();
    assert!(run(dir.path(), &["baseline", "steps=4", "log_every=1", "eval_every=2"]).success());
    let plugin = built().plugin("value_norm");
    let ran = run(
        dir.path(),
        &[plugin.to_str().unwrap(), "steps=4", "log_every=2", "eval_every=4", "metrics_every=1"],
    );
    assert!(ran.success(), "{}", ran.stderr());
    assert!(
        ran.stdout().contains("arm:baseline reusing"),
        "a baseline that logged differently is the same: {}",
        ran.stdout()
    );
    // Two baselines that differ in a logging cadence alone are one group of replicates.
    assert!(run(dir.path(), &["baseline", "steps=4", "seed=2", "log_every=3"]).success());
    let baselines: Vec<String> = runs(dir.path())
        .into_iter()
        .filter(|r| r.arm() == "baseline")
        .map(|r| r.path.display().to_string())
        .collect();
    let mut args = vec!["compare", "--out", "cmp"];
    args.extend(baselines.iter().map(String::as_str));
    let compared = built().lmhost(dir.path(), &args);
    assert!(compared.success(), "{}", compared.stderr());
    let md = std::fs::read_to_string(dir.path().join("cmp/report.md")).unwrap();
    assert!(md.contains("| baseline | 2 | 1,2 |"), "{md}");
}

#[test]
fn sweeps_share_baselines_retrain_them_when_asked_and_end_with_their_comparison() {
    let dir = tempfile::tempdir().unwrap();
    let sweep = |plugin: &str, extra: &[&str]| {
        let mut args = vec!["run", plugin, "steps=3", "eval_every=3", "seeds=2"];
        args.extend(SMALL_MODEL);
        args.extend(extra);
        let ran = built().lmhost(dir.path(), &args);
        assert!(ran.success(), "{}", ran.stderr());
        ran.stdout()
    };
    let (value_norm, op_block) = (built().plugin("value_norm"), built().plugin("op_block"));
    let first = sweep(value_norm.to_str().unwrap(), &[]);
    assert!(first.contains("the comparison of its groups") && first.contains(" 2 "), "{first}");
    assert!(
        !first.contains("one seed; use several seeds"),
        "the sweep's summary, not the last seed's: {first}"
    );
    // Another plugin's sweep in the same runs folder: the two finished baselines serve it.
    let second = sweep(op_block.to_str().unwrap(), &[]);
    assert_eq!(second.matches("arm:baseline reusing").count(), 2, "{second}");
    // --retrain-baseline: both trained again, once each.
    let third = sweep(op_block.to_str().unwrap(), &["--retrain-baseline"]);
    assert_eq!(third.matches("arm:baseline run:").count(), 2, "{third}");
}

#[test]
fn a_tokenizer_saved_again_by_transformers_is_the_same_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let golden = built().workspace_root.join("tests/golden/tokenizer_resave");
    for (i, file) in ["tokenizer.json", "resaved/tokenizer.json"].iter().enumerate() {
        let tokenizer = format!("tokenizer={}", golden.join(file).display());
        let seed = format!("seed={}", i + 1);
        assert!(run(dir.path(), &["baseline", "steps=2", &tokenizer, &seed]).success());
    }
    let dirs: Vec<String> = runs(dir.path()).iter().map(|r| r.path.display().to_string()).collect();
    let compared = built().lmhost(dir.path(), &["compare", &dirs[0], &dirs[1], "--out", "cmp"]);
    assert!(compared.success(), "one tokenizer, two files: {}", compared.stderr());
}

#[test]
fn a_hugging_face_folder_with_dropout_says_that_lmhost_has_none() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("hf");
    std::fs::create_dir(&folder).unwrap();
    let golden = built().workspace_root.join("tests/golden/hf_gpt2/tiny_gpt2");
    std::fs::copy(golden.join("model.safetensors"), folder.join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(golden.join("config.json")).unwrap();
    std::fs::write(
        folder.join("config.json"),
        config.replace("\"resid_pdrop\": 0.0", "\"resid_pdrop\": 0.1"),
    )
    .unwrap();
    let ran = built()
        .lmhost(dir.path(), &["run", "baseline", "init=hf:hf", "steps=1", "context_length=32", "--dry-run"]);
    assert!(ran.success(), "{}", ran.stderr());
    assert!(ran.stderr().contains("resid_pdrop 0.1); lmhost trains without dropout"), "{}", ran.stderr());
}
