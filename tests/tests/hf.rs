//! Hugging Face GPT-2 and Llama interop, checked llm.c style against golden files that
//! `tests/golden/hf_{gpt2,llama}/make_fixtures.py` made with PyTorch + transformers: lmhost
//! loads their folders and gives transformers' logits; its own export loads back with its own
//! logits; a run started from an export (`init=hf:DIR`) starts where the exported run ended.

use std::path::{Path, PathBuf};

use lmhost_tests::{built, runs, SMALL_MODEL};

/// The golden folder of an arch: hf_gpt2 or hf_llama.
fn golden_of(arch: &str) -> PathBuf {
    built().workspace_root.join("tests/golden").join(format!("hf_{arch}"))
}

fn golden() -> PathBuf {
    golden_of("gpt2")
}

/// The f32 tensor `name` of a safetensors file, with its shape.
fn tensor(path: &Path, name: &str) -> (Vec<f32>, Vec<usize>) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = file.tensor(name).unwrap_or_else(|e| panic!("{}: {name}: {e}", path.display()));
    assert_eq!(view.dtype(), safetensors::Dtype::F32);
    let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    (values, view.shape().to_vec())
}

fn max_difference(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// `lmhost logits MODEL` for the golden ids.
fn logits(dir: &Path, model: &str, out: &str) -> (Vec<f32>, Vec<usize>) {
    let ids = golden().join("ids.safetensors");
    let ran = built().lmhost(dir, &["logits", model, "--ids", ids.to_str().unwrap(), "--out", out]);
    assert!(ran.success(), "{}", ran.stderr());
    tensor(&dir.join(out), "logits")
}

#[test]
fn lmhost_reproduces_the_logits_transformers_computed() {
    let dir = tempfile::tempdir().unwrap();
    for (arch, name) in [
        ("gpt2", "tiny_gpt2"),
        ("gpt2", "tiny_untied_erf"),
        ("llama", "tiny_llama"),
        ("llama", "tiny_llama_tied"),
    ] {
        let folder = golden_of(arch).join(name);
        let (ours, shape) = logits(dir.path(), &format!("hf:{}", folder.display()), "ours.safetensors");
        let (theirs, their_shape) =
            tensor(&golden_of(arch).join(format!("{name}.logits.safetensors")), "logits");
        assert_eq!(shape, their_shape);
        let worst = max_difference(&ours, &theirs);
        assert!(worst < 1e-4, "{name}: logits differ from transformers' by {worst}");
    }
}

#[test]
fn an_export_loads_back_with_the_same_logits_and_a_run_can_start_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "baseline", "steps=4", "gelu=tanh", "tied_head=true", "head_bias=false"];
    args.extend(SMALL_MODEL);
    let ran = built().lmhost(dir.path(), &args);
    assert!(ran.success(), "{}", ran.stderr());
    let run = runs(dir.path()).remove(0);
    let run_path = run.path.to_str().unwrap();
    let out = dir.path().join("hf");
    let exported = built().lmhost(dir.path(), &["export", run_path, "--format", "hf-gpt2", "--out", "hf"]);
    assert!(exported.success(), "{}", exported.stderr());
    for file in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "gpt2");
    assert_eq!(config["activation_function"], "gelu_new");
    assert_eq!(config["tie_word_embeddings"], true);
    assert_eq!(config["n_positions"], 32);
    // Conv1D layout: (in, out), the transpose of lmhost's (out, in); no separate tied head.
    assert_eq!(tensor(&out.join("model.safetensors"), "transformer.h.0.attn.c_attn.weight").1, vec![64, 192]);
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    let names = safetensors::SafeTensors::deserialize(&bytes).unwrap().names().len();
    assert_eq!(names, 2 + 12 + 2, "wte, wpe, one block's 12 tensors, ln_f; no lm_head");

    let (ours, _) = logits(dir.path(), run_path, "run.safetensors");
    let (back, _) = logits(dir.path(), "hf:hf", "back.safetensors");
    let worst = max_difference(&ours, &back);
    assert!(worst < 1e-5, "the export's logits differ from the run's by {worst}");

    let again = built().lmhost(dir.path(), &["export", run_path, "--format", "hf-gpt2", "--out", "hf"]);
    assert!(!again.success() && again.stderr().contains("--overwrite"), "{}", again.stderr());

    // Started from the export, with its tokenizer: step 0 is where the exported run ended.
    let runs_dir = dir.path().join("from-hf");
    let mut args = vec![
        "run",
        "baseline",
        "init=hf:hf",
        "steps=1",
        "context_length=32",
        "eval_windows=16",
        "--runs-dir",
    ];
    args.push(runs_dir.to_str().unwrap());
    let ran = built().lmhost(dir.path(), &args);
    assert!(ran.success(), "{}", ran.stderr());
    let started = lmhost_tests::run_folders(&runs_dir).remove(0);
    assert_eq!(started.record["config"]["model"]["n_embd"], 64, "the architecture came from config.json");
    let (end, start) = (*run.val_losses().last().unwrap(), started.val_losses()[0]);
    assert!(
        (end - start).abs() < 1e-4 * end,
        "the exported run ended at {end}, the new one starts at {start}"
    );
}

#[test]
fn what_gpt2_cannot_hold_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "baseline", "steps=1"];
    args.extend(SMALL_MODEL);
    assert!(built().lmhost(dir.path(), &args).success());
    let run = runs(dir.path()).remove(0);
    let ran = built().lmhost(dir.path(), &["export", run.path.to_str().unwrap(), "--format", "hf-gpt2"]);
    assert!(!ran.success());
    assert!(ran.stderr().contains("head_bias=false"), "{}", ran.stderr());

    let folder = golden().join("tiny_gpt2");
    let init = format!("init=hf:{}", folder.display());
    let ran = built().lmhost(dir.path(), &["run", "baseline", &init, "n_layer=3", "steps=1"]);
    assert!(!ran.success());
    assert!(ran.stderr().contains("n_layer=3 conflicts with init=hf:"), "{}", ran.stderr());
    let ran = built().lmhost(dir.path(), &["run", "baseline", "init=hf:nowhere", "steps=1"]);
    assert!(!ran.success());
    assert!(ran.stderr().contains("nowhere/config.json"), "{}", ran.stderr());
    assert_eq!(ran.error_lines().len(), 1, "{}", ran.stderr());
}

#[test]
fn a_llama_export_loads_back_with_the_same_logits_and_a_run_can_start_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "baseline", "steps=4", "arch=llama"];
    args.extend(SMALL_MODEL);
    let ran = built().lmhost(dir.path(), &args);
    assert!(ran.success(), "{}", ran.stderr());
    let run = runs(dir.path()).remove(0);
    let run_path = run.path.to_str().unwrap();
    let refused = built().lmhost(dir.path(), &["export", run_path, "--format", "hf-gpt2", "--out", "gpt2"]);
    assert!(!refused.success() && refused.stderr().contains("exports as hf-llama"), "{}", refused.stderr());
    let exported = built().lmhost(dir.path(), &["export", run_path, "--format", "hf-llama", "--out", "hf"]);
    assert!(exported.success(), "{}", exported.stderr());
    let out = dir.path().join("hf");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["model_type"], "llama");
    assert_eq!(config["intermediate_size"], 192, "⌈8 · 64 / 3⌉ rounded up to 64");
    // q, k and v as three projections; one block of 9 tensors, the embedding, the norm, the head.
    assert_eq!(
        tensor(&out.join("model.safetensors"), "model.layers.0.self_attn.k_proj.weight").1,
        vec![64, 64]
    );
    let bytes = std::fs::read(out.join("model.safetensors")).unwrap();
    assert_eq!(safetensors::SafeTensors::deserialize(&bytes).unwrap().names().len(), 1 + 9 + 1 + 1);

    let (ours, _) = logits(dir.path(), run_path, "run.safetensors");
    let (back, _) = logits(dir.path(), "hf:hf", "back.safetensors");
    let worst = max_difference(&ours, &back);
    assert!(worst < 1e-5, "the export's logits differ from the run's by {worst}");

    let runs_dir = dir.path().join("from-hf");
    let args =
        ["run", "baseline", "init=hf:hf", "steps=1", "context_length=32", "eval_windows=16", "--runs-dir"];
    let mut args: Vec<&str> = args.to_vec();
    args.push(runs_dir.to_str().unwrap());
    let ran = built().lmhost(dir.path(), &args);
    assert!(ran.success(), "{}", ran.stderr());
    let started = lmhost_tests::run_folders(&runs_dir).remove(0);
    assert_eq!(started.record["config"]["model"]["arch"], "llama", "the architecture came from config.json");
    let (end, start) = (*run.val_losses().last().unwrap(), started.val_losses()[0]);
    assert!(
        (end - start).abs() < 1e-4 * end,
        "the exported run ended at {end}, the new one starts at {start}"
    );
}
