//! `lmhost compare` on real runs (tiny preset, a few steps, two seeds per arm): the report's
//! numbers against a computation from the Arrow data here, the page rendered by headless
//! Chromium, and bad input.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use arrow_array::{Array, Float64Array, StringArray};
use lmhost_tests::{built, runs, Ran};
use serde_json::Value;

/// Four real runs (baseline and value_norm, seeds 1 and 2), trained once for every test here.
fn fixture() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let plugin = built().plugin("value_norm");
        for seed in ["seed=1", "seed=2"] {
            let ran = built().lmhost(
                dir.path(),
                &[
                    "run",
                    plugin.to_str().unwrap(),
                    "--preset",
                    "tiny",
                    seed,
                    "steps=4",
                    "eval_every=2",
                    "eval_windows=8",
                    "log_every=2",
                ],
            );
            assert!(ran.success(), "{}", ran.stderr());
            assert!(
                ran.stdout().contains("report: reports/"),
                "`lmhost run` ends with its report: {}",
                ran.stdout()
            );
        }
        dir
    })
    .path()
}

/// The four run folders copied into a fresh folder, to damage freely.
fn copy_of_fixture() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("runs")).unwrap();
    for run in runs(fixture()) {
        let to = dir.path().join("runs").join(run.path.file_name().unwrap());
        std::fs::create_dir(&to).unwrap();
        for f in ["run.json", "stats.arrows"] {
            std::fs::copy(run.path.join(f), to.join(f)).unwrap();
        }
    }
    dir
}

fn compare(dir: &Path, extra: &[&str]) -> Ran {
    let mut args = vec!["compare", "runs/*"];
    args.extend(extra);
    built().lmhost(dir, &args)
}

/// The last validation loss of a run, read straight from its Arrow file.
fn final_val_loss(run: &Path) -> f64 {
    let reader =
        arrow_ipc::reader::StreamReader::try_new(File::open(run.join("stats.arrows")).unwrap(), None)
            .unwrap();
    let mut last = f64::NAN;
    for batch in reader {
        let batch = batch.unwrap();
        let split = batch.column_by_name("split").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        let metric = batch.column_by_name("metric").unwrap();
        let loss = batch.column_by_name("loss").unwrap().as_any().downcast_ref::<Float64Array>().unwrap();
        for i in 0..batch.num_rows() {
            if split.value(i) == "val" && metric.is_null(i) {
                last = loss.value(i);
            }
        }
    }
    last
}

fn group<'a>(report: &'a Value, label: &str) -> &'a Value {
    report["summaries"].as_array().unwrap().iter().find(|s| s["label"] == label).unwrap()
}

#[test]
fn the_report_numbers_match_the_arrow_data() {
    let out = tempfile::tempdir().unwrap();
    let out_dir = out.path().join("report");
    let ran = compare(fixture(), &["--out", out_dir.to_str().unwrap()]);
    assert!(ran.success(), "{}", ran.stderr());
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out_dir.join("report.json")).unwrap()).unwrap();

    // Independent computation: final validation losses by arm and seed.
    let mut by_arm: std::collections::BTreeMap<String, Vec<(u64, f64)>> = Default::default();
    for run in runs(fixture()) {
        let seed = run.record["config"]["run"]["seed"].as_u64().unwrap();
        by_arm.entry(run.arm().to_owned()).or_default().push((seed, final_val_loss(&run.path)));
    }
    let sorted = |arm: &str| -> Vec<f64> {
        let mut v = by_arm[arm].clone();
        v.sort_by_key(|p| p.0);
        v.into_iter().map(|p| p.1).collect()
    };
    let (b, e) = (sorted("baseline"), sorted("experiment"));
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let std =
        |v: &[f64]| (v.iter().map(|x| (x - mean(v)).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
    let close = |a: &Value, b: f64| assert!((a.as_f64().unwrap() - b).abs() < 1e-9, "{a} vs {b}");

    let base = group(&report, "baseline");
    assert_eq!(base["n"], 2);
    close(&base["loss_mean"], mean(&b));
    close(&base["loss_std"], std(&b));
    let exp = group(&report, "value_norm/normv1_0");
    assert_eq!(exp["n"], 2);
    close(&exp["loss_mean"], mean(&e));
    close(&exp["loss_std"], std(&e));
    close(&exp["difference"], mean(&e) - mean(&b));
    // Seeds match between the arms: a paired t-test on the two per-seed differences, whose t has
    // one degree of freedom, a Cauchy distribution: p = 1 − 2·atan(|t|)/π, and the 95 % interval
    // is mean ± tan(0.475π)·se.
    let d = [e[0] - b[0], e[1] - b[1]];
    let se = std(&d) / 2f64.sqrt();
    let t = mean(&d) / se;
    assert_eq!(exp["test"], "paired");
    close(&exp["p_value"], 1.0 - 2.0 * t.abs().atan() / std::f64::consts::PI);
    let half = (0.475 * std::f64::consts::PI).tan() * se;
    let ci = exp["ci95"].as_array().unwrap();
    assert!((ci[0].as_f64().unwrap() - (mean(&d) - half)).abs() < 1e-6);
    assert!((ci[1].as_f64().unwrap() - (mean(&d) + half)).abs() < 1e-6);

    // Markdown carries the same table; every plot exists as SVG and PNG.
    let md = std::fs::read_to_string(out_dir.join("report.md")).unwrap();
    assert!(md.contains(&format!("| baseline | 2 | 1,2 | {:.4} ± {:.4} |", mean(&b), std(&b))), "{md}");
    for plot in [
        "val_loss",
        "val_loss_vs_baseline",
        "train_loss",
        "train_loss_vs_baseline",
        "val_accuracy",
        "lr",
        "grad_norm",
    ] {
        assert!(out_dir.join(format!("{plot}.svg")).is_file(), "{plot}.svg");
        let png = std::fs::read(out_dir.join(format!("{plot}.png"))).unwrap();
        assert_eq!(&png[1..4], b"PNG", "{plot}.png");
    }
}

#[test]
fn the_page_renders_in_headless_chromium() {
    let out = tempfile::tempdir().unwrap();
    let report = out.path().join("report");
    assert!(compare(fixture(), &["--out", report.to_str().unwrap()]).success());
    let chromium = lmhost_tests::chromium();
    let url = format!("file://{}", report.join("report.html").display());
    let profile = out.path().join("profile");
    let chrome = |extra: &[String]| {
        let mut args: Vec<String> = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--user-data-dir={}", profile.display()));
        args.extend(extra.iter().cloned());
        args.push(url.clone());
        Command::new(&chromium).args(&args).output().expect("run chromium")
    };
    let screenshot: PathBuf = out.path().join("report.png");
    let shot = chrome(&[format!("--screenshot={}", screenshot.display()), "--window-size=1400,2000".into()]);
    let png = std::fs::read(&screenshot)
        .unwrap_or_else(|_| panic!("no screenshot: {}", String::from_utf8_lossy(&shot.stderr)));
    assert_eq!(&png[1..4], b"PNG");
    assert!(png.len() > 20_000, "a blank page is a few kB; got {} bytes", png.len());
    // The rendered DOM: the SVG plots are there and carry their data.
    let dom = String::from_utf8(chrome(&["--dump-dom".into()]).stdout).unwrap();
    assert!(dom.matches("<svg").count() >= 7, "plots missing from the rendered page");
    let points: Vec<usize> =
        dom.split("data-points=\"").skip(1).map(|s| s.split('"').next().unwrap().parse().unwrap()).collect();
    assert!(points.len() >= 10 && points.iter().filter(|&&p| p >= 2).count() >= 10, "{points:?}");
    assert!(dom.contains("value_norm/normv1_0") && dom.contains("Final validation loss"));
}

#[test]
fn a_torn_stats_file_and_a_running_run_are_reported_as_such() {
    let dir = copy_of_fixture();
    let runs = runs(dir.path());
    let stats = runs[3].path.join("stats.arrows");
    let bytes = std::fs::read(&stats).unwrap();
    std::fs::write(&stats, &bytes[..bytes.len() - 100]).unwrap();
    let record = runs[2].path.join("run.json");
    let text = std::fs::read_to_string(&record)
        .unwrap()
        .replace("\"status\": \"finished\"", "\"status\": \"running\"");
    std::fs::write(&record, text).unwrap();
    let ran = compare(dir.path(), &["--out", "out"]);
    assert!(ran.success(), "{}", ran.stderr());
    let notes = ran.stderr();
    assert!(
        notes.contains("stats.arrows is torn") && notes.contains("the rows before the tear are used"),
        "{notes}"
    );
    assert!(notes.contains("still running"), "{notes}");
    let html = std::fs::read_to_string(dir.path().join("out/report.html")).unwrap();
    assert!(html.contains("Read this first") && html.contains("running"));
}

fn one_error(ran: &Ran, needles: &[&str]) {
    assert!(!ran.success());
    let errors = ran.error_lines();
    assert_eq!(errors.len(), 1, "{}", ran.stderr());
    for n in needles {
        assert!(errors[0].contains(n), "`{}` lacks `{n}`", errors[0]);
    }
}

#[test]
fn bad_input_gets_one_clear_line() {
    let dir = copy_of_fixture();
    let d = dir.path();
    let runs = runs(d);
    // A folder that is not a run.
    std::fs::create_dir(d.join("not_a_run")).unwrap();
    one_error(&built().lmhost(d, &["compare", "not_a_run"]), &["not_a_run is not a run folder"]);
    // A pattern that matches nothing.
    one_error(&built().lmhost(d, &["compare", "runs/*nothing*"]), &["no run folders match"]);
    // Different tokenizers: refused, unless forced.
    let record = runs[0].path.join("run.json");
    let original = std::fs::read_to_string(&record).unwrap();
    // Both identities change: the file's and, where the run recorded it, its content's.
    let manifest = &runs[0].record["data"]["manifest"];
    let mut edited = original.clone();
    for key in ["tokenizer_fingerprint", "tokenizer_content"] {
        if let Some(identity) = manifest[key].as_str() {
            edited = edited.replace(identity, &"0".repeat(identity.len()));
        }
    }
    std::fs::write(&record, edited).unwrap();
    one_error(&compare(d, &["--out", "x"]), &["different tokenizers", "--force"]);
    assert!(compare(d, &["--out", "x", "--force"]).success());
    std::fs::write(&record, &original).unwrap();
    // An existing report is not overwritten unless asked.
    let before = std::fs::read(d.join("x/report.html")).unwrap();
    one_error(&compare(d, &["--out", "x"]), &["already holds a report", "--overwrite"]);
    assert_eq!(std::fs::read(d.join("x/report.html")).unwrap(), before);
    assert!(compare(d, &["--out", "x", "--overwrite"]).success());
    // A FLOPs axis: every run counted its FLOPs per token; a run that did not is named.
    let flops = compare(d, &["--out", "f", "--x", "flops"]);
    assert!(flops.success(), "{}", flops.stderr());
    assert!(std::fs::read_to_string(d.join("f/report.md")).unwrap().contains("FLOPs/token"));
    let record = runs[2].path.join("run.json");
    let original = std::fs::read_to_string(&record).unwrap();
    let mut uncounted: serde_json::Value = serde_json::from_str(&original).unwrap();
    uncounted["result"].as_object_mut().unwrap().remove("flops_per_token");
    std::fs::write(&record, uncounted.to_string()).unwrap();
    one_error(&compare(d, &["--out", "g", "--x", "flops"]), &["has no FLOPs count", "--x tokens"]);
    std::fs::write(&record, &original).unwrap();
    // An empty run.
    std::fs::remove_file(runs[1].path.join("stats.arrows")).unwrap();
    one_error(&compare(d, &["--out", "y"]), &["has no stats yet (empty run)"]);
    // Stats from a future schema version.
    let future = runs[1].path.join("stats.arrows");
    let mut schema = reports::stats::schema(Default::default());
    schema.metadata.insert(reports::stats::VERSION_KEY, "99");
    arrow_ipc::writer::StreamWriter::try_new(File::create(&future).unwrap(), &schema)
        .unwrap()
        .finish()
        .unwrap();
    one_error(&compare(d, &["--out", "y"]), &["schema version 99", "upgrade lmhost"]);
    assert!(!d.join("y").exists(), "a refused comparison writes nothing");
}
