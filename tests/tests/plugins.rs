//! The lmplay experiments as plugins: every variant trains on the tiny preset with finite,
//! falling loss; every sacrificial variant's prod weights, loaded into the plain baseline, give
//! the experiment's logits (`lmhost export --prod --verify`); generation is deterministic for a
//! seed and the same from prod weights.

use std::path::{Path, PathBuf};

use lmhost_tests::{built, runs, Ran};

/// Trains `plugin` with `variant` (`"variant key=value …"`, `default` for a plugin without
/// variants) alone for a few tiny-preset steps; the run's folder.
fn train(dir: &Path, plugin: &str, variant: &str) -> PathBuf {
    let so = built().plugin(plugin);
    let mut words = variant.split(' ');
    let variant = match words.next().unwrap() {
        "default" => "seed=1".to_owned(),
        name => format!("variant={name}"),
    };
    let mut args =
        vec!["run", so.to_str().unwrap(), &variant, "--no-baseline", "--preset", "tiny", "steps=6"];
    args.extend(["eval_every=3", "eval_windows=8", "log_every=3", "metrics_every=2"]);
    args.extend(words);
    let ran = built().lmhost(dir, &args);
    assert!(ran.success(), "{plugin} {variant}: {}", ran.stderr());
    let run = runs(dir).into_iter().last().unwrap();
    assert_eq!(run.status(), "finished");
    let train: Vec<f64> = run.stats().split(reports::Split::Train).map(|r| r.loss.unwrap()).collect();
    assert!(train.iter().all(|l| l.is_finite()), "{plugin} {variant}: {train:?}");
    let val = run.val_losses();
    assert!(val.last().unwrap() < &(val[0] - 0.05), "{plugin} {variant} did not learn: {val:?}");
    run.path
}

fn export_verified(dir: &Path, run: &Path) -> Ran {
    built().lmhost(dir, &["export", run.to_str().unwrap(), "--prod", "--verify"])
}

fn check_variants(plugin: &str, variants: &[&str], sacrificial: bool) {
    let dir = tempfile::tempdir().unwrap();
    for variant in variants {
        let run = train(dir.path(), plugin, variant);
        // Every run logs the outlier kurtosis of its residual stream (metrics_every=2).
        let kurtosis = runs(dir.path())
            .last()
            .unwrap()
            .stats()
            .rows
            .iter()
            .filter(|r| r.metric.as_deref() == Some("kurtosis.final"))
            .count();
        assert_eq!(kurtosis, 3, "{plugin} {variant}: kurtosis at steps 2, 4 and 6");
        let ran = export_verified(dir.path(), &run);
        if sacrificial {
            assert!(ran.success(), "{plugin} {variant}: {}", ran.stderr());
            let line = ran.stdout().lines().find(|l| l.starts_with("verify:")).unwrap().to_owned();
            let worst: f64 =
                line.split("max |Δ| = ").nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
            assert!(worst < 1e-4, "{plugin} {variant}: {line}");
            assert!(line.contains("parameters, as the baseline"), "{line}");
            assert!(run.join("prod.safetensors").is_file());
        } else {
            assert!(!ran.success());
            assert!(ran.stderr().contains("is not sacrificial"), "{}", ran.stderr());
            assert!(!run.join("prod.safetensors").exists());
        }
    }
}

#[test]
fn unified_embeddings_variants_train_and_export_to_the_baseline() {
    check_variants(
        "unified_embeddings",
        &["ue8x", "ue1x", "ue16x", "ue8x_mid32", "ue8x_mid64", "ue8x_gelu"],
        true,
    );
}

#[test]
fn unified_weights_variants_train_and_export_to_the_baseline() {
    check_variants("unified_weights", &["uw1_0", "uw1_1", "uw1_2", "uw2_0"], true);
}

#[test]
fn reverse_position_attention_variants_train() {
    check_variants("reverse_position_attention", &["apos1_0", "apos1_1", "apos1_2"], false);
}

#[test]
fn value_norm_variants_train() {
    check_variants("value_norm", &["normv1_0", "normv1_1", "normv1_2"], false);
}

#[test]
fn simplified_blocks_variants_train_with_and_without_norms() {
    let forms = ["pre-ln", "parallel", "skipless", "skipless-parallel"];
    let with_none: Vec<String> = forms.iter().map(|f| format!("{f} norm=none")).collect();
    let all: Vec<&str> = forms.iter().copied().chain(with_none.iter().map(String::as_str)).collect();
    check_variants("simplified_blocks", &all, false);
}

#[test]
fn gains_of_the_skipless_blocks_are_in_the_stats() {
    let dir = tempfile::tempdir().unwrap();
    train(dir.path(), "simplified_blocks", "skipless");
    let stats = runs(dir.path()).pop().unwrap().stats();
    let named = |n: &str| stats.rows.iter().filter(|r| r.metric.as_deref() == Some(n)).count();
    assert_eq!(named("h0.gain.beta_ff"), 3);
    assert_eq!(named("h3.shaped.alpha"), 3);
}

#[test]
fn op_block_mup_and_latent_attention_train() {
    check_variants("op_block", &["default"], false);
    check_variants("mup", &["mup", "sp", "mup warmup_unit=tokens warmup=2048"], false);
    check_variants("latent_attention", &["default"], false);
}

fn generate(dir: &Path, run: &Path, extra: &[&str]) -> String {
    let mut args = vec!["generate", run.to_str().unwrap(), "--prompt", "ROMEO:", "--max-tokens", "24"];
    args.extend(extra);
    let ran = built().lmhost(dir, &args);
    assert!(ran.success(), "{}", ran.stderr());
    ran.stdout()
}

#[test]
fn generation_is_deterministic_and_the_same_from_prod_weights() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let so = built().plugin("unified_embeddings");
    let ran = built().lmhost(
        d,
        &["run", so.to_str().unwrap(), "--preset", "tiny", "steps=8", "eval_every=8", "eval_windows=8"],
    );
    assert!(ran.success(), "{}", ran.stderr());
    let all = runs(d);
    let (baseline, experiment) = (&all[0].path, &all[1].path);
    for run in [baseline, experiment] {
        let text = generate(d, run, &["--seed", "5"]);
        assert!(text.starts_with("ROMEO:") && text.len() > "ROMEO:".len(), "{text}");
        assert_eq!(text, generate(d, run, &["--seed", "5"]), "the same seed, the same text");
        assert_eq!(
            generate(d, run, &["--temperature", "0", "--seed", "1"]),
            generate(d, run, &["--temperature", "0", "--seed", "2"]),
            "greedy ignores the seed"
        );
    }
    // The prod weights in the plain baseline continue the prompt exactly as the experiment does.
    assert_eq!(
        generate(d, experiment, &["--temperature", "0", "--prod"]),
        generate(d, experiment, &["--temperature", "0"])
    );
    assert_eq!(
        generate(d, experiment, &["--seed", "9", "--prod"]),
        generate(d, experiment, &["--seed", "9"])
    );
    // Bad input: one line.
    let ran = built().lmhost(d, &["generate", baseline.to_str().unwrap(), "--prompt", ""]);
    assert_eq!(ran.error_lines().len(), 1);
    assert!(ran.error_lines()[0].contains("--prompt is empty"));
    let ran = built().lmhost(d, &["generate", baseline.to_str().unwrap(), "--prompt", "x", "--prod"]);
    assert!(ran.error_lines()[0].contains("not sacrificial"), "{}", ran.stderr());
    std::fs::write(baseline.join("checkpoints/step_000008.safetensors"), b"damaged").unwrap();
    let ran = built().lmhost(d, &["generate", baseline.to_str().unwrap(), "--prompt", "x"]);
    assert_eq!(ran.error_lines().len(), 1, "{}", ran.stderr());
    assert!(
        ran.error_lines()[0].contains("step_000008.safetensors is not a checkpoint of this run"),
        "{}",
        ran.stderr()
    );
}
