//! `lmhost list`, `describe`, `--help` and building a plugin from its crate folder.

use lmhost_tests::{built, runs, SMALL_MODEL};

#[test]
fn describe_shows_variants_and_every_config_key() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = built().plugin("value_norm");
    let ran = built().lmhost(dir.path(), &["describe", plugin.to_str().unwrap()]);
    assert!(ran.success());
    let out = ran.stdout();
    for needle in [
        "value_norm 0.1.0 (plugin-api 0.1.3)",
        "normv1_1",
        "\"value_norm_blocks\":\"from1\"",
        "value_norm_blocks",
        "n_layer",
        "weight_decay",
        "warmup_unit",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
    let ran = built().lmhost(dir.path(), &["describe", "baseline"]);
    assert!(ran.stdout().contains("baseline") && ran.stdout().contains("n_embd"));
}

#[test]
fn run_help_lists_the_config_keys_and_presets() {
    let dir = tempfile::tempdir().unwrap();
    let out = built().lmhost(dir.path(), &["run", "--help"]).stdout();
    for needle in [
        "micro_batch_size",
        "Sequences per forward/backward",
        "n_head",
        "gpt2ish",
        "[constant|cosine|linear]",
        "f32 on the CPU, bf16-mixed on CUDA",
        "[auto|f32|tf32|bf16-mixed]",
    ] {
        assert!(out.contains(needle), "missing `{needle}` in:\n{out}");
    }
    // The build's features, which a crate folder given to `run` is built with too, and what
    // the matrix products run on.
    let version = built().lmhost(dir.path(), &["--version"]).stdout();
    let version = version.trim();
    assert!(
        version.starts_with("lmhost 0.1.0 (features: none; matrix products: ") && version.ends_with(')'),
        "{version}"
    );
}

#[test]
fn list_shows_the_baseline_and_installed_plugins() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::copy(built().plugin("value_norm"), dir.path().join("plugins/value_norm.so")).unwrap();
    std::fs::write(dir.path().join("plugins/broken.so"), "junk").unwrap();
    let out = built().lmhost(dir.path(), &["list"]).stdout();
    assert!(out.contains("baseline (built-in)"), "{out}");
    assert!(out.contains("plugins/value_norm.so") && out.contains("normv1_0,normv1_1,normv1_2"), "{out}");
    assert!(out.contains("plugins/broken.so") && out.contains("cannot load"), "{out}");
}

#[test]
fn a_crate_folder_is_built_and_installed_then_run() {
    let dir = tempfile::tempdir().unwrap();
    let folder = built().workspace_root.join("plugins/value_norm");
    let mut a = vec!["run", folder.to_str().unwrap(), "--no-baseline", "steps=1"];
    a.extend(SMALL_MODEL);
    let ran = built().lmhost(dir.path(), &a);
    assert!(ran.success(), "{}", ran.stderr());
    let installed = built().workspace_root.join("plugins/value_norm.so");
    assert!(installed.exists(), "plugins/value_norm.so is installed");
    let runs = runs(dir.path());
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].record["plugin"]["name"], "value_norm");
}

#[test]
fn the_readme_plugin_is_the_one_the_kit_compiles() {
    // The kit's doc test compiles docs/example_plugin.rs; the README must show that same code.
    let root = &built().workspace_root;
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let example = std::fs::read_to_string(root.join("docs/example_plugin.rs")).unwrap();
    assert!(readme.contains(&example), "README.md's plugin differs from docs/example_plugin.rs");
}
