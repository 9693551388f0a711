//! Every panel of a report over runs that evaluated twice (at step 0 and at their last step, as
//! a short demo run does) draws its points: step 0 stays on the log x axis, and series too short
//! for a visible line get markers.

use std::path::Path;

use reports::{CompareOptions, Comparison, Run, Split, StatsRow, StatsWriter};

/// A run folder whose stats have train rows for steps 1..=10, validation at 0 and 10, and one
/// extra metric at step 10.
fn write_run(dir: &Path, arm: &str, plugin: &str, offset: f64) {
    std::fs::create_dir_all(dir).unwrap();
    let record = serde_json::json!({
        "id": dir.file_name().unwrap().to_str().unwrap(),
        "arm": arm,
        "status": "finished",
        "plugin": {"name": plugin, "variant": null},
        "config": {"run": {"seed": 1, "lr": 1e-3}, "model": {}},
        "data": {"manifest": {"tokenizer_fingerprint": "t", "val_fingerprint": "v"}},
        "result": {"params_train": 10, "params_prod": 10, "tokens_per_s": 100.0, "wall_s": 3.0},
    });
    std::fs::write(dir.join("run.json"), record.to_string()).unwrap();
    let mut w = StatsWriter::create(&dir.join("stats.arrows"), "{}").unwrap();
    let val = |step: u64, loss: f64| StatsRow {
        loss: Some(loss),
        accuracy: Some(0.1 + step as f64 / 100.0),
        ..StatsRow::at(step, step * 64, step as f64, Split::Val)
    };
    w.push(val(0, 8.0 + offset));
    for step in 1..=10 {
        w.push(StatsRow {
            loss: Some(8.0 - step as f64 * 0.1 + offset),
            accuracy: Some(0.1),
            lr: Some(1e-3),
            grad_norm: Some(1.0),
            tokens_per_s: Some(100.0),
            ..StatsRow::at(step, step * 64, step as f64, Split::Train)
        });
    }
    w.push(val(10, 7.0 + offset));
    w.push(StatsRow::metric(10, 640, 10.0, "kurtosis.final", 2.0 + offset));
    w.finish().unwrap();
}

#[test]
fn every_panel_of_a_two_evaluation_run_draws_its_points() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("base"), dir.path().join("exp"));
    write_run(&a, "baseline", "baseline", 0.0);
    write_run(&b, "experiment", "an_idea_with_a_long_name", -0.2);
    let runs = vec![Run::load(&a).unwrap(), Run::load(&b).unwrap()];
    let comparison = Comparison::new(runs, CompareOptions::default()).unwrap();
    let files = reports::write_report(&comparison, &dir.path().join("report")).unwrap();
    let svgs: Vec<_> = files.plots.iter().filter(|p| p.extension().is_some_and(|e| e == "svg")).collect();
    for slug in ["val_loss", "val_loss_vs_baseline", "train_loss", "val_accuracy", "metric_kurtosis_final"] {
        assert!(svgs.iter().any(|p| p.file_stem().unwrap() == slug), "no {slug}.svg among {svgs:?}");
    }
    for path in svgs {
        let svg = std::fs::read_to_string(path).unwrap();
        let name = path.file_name().unwrap().to_string_lossy();
        for part in svg.split(r#"class="series""#).skip(1) {
            let points: usize = part
                .split("data-points=\"")
                .nth(1)
                .and_then(|p| p.split('"').next())
                .and_then(|p| p.parse().ok())
                .unwrap();
            assert!(points >= 1, "{name}: a series without points");
            let d = part.split(" d=\"").nth(1).and_then(|p| p.split('"').next()).unwrap();
            assert_eq!(
                d.matches(['M', 'L']).count(),
                points,
                "{name}: every point is on the path (step 0 too)"
            );
        }
        if name.starts_with("val_") || name.starts_with("metric_") {
            assert!(svg.contains(r#"class="marker""#), "{name}: a short series gets markers");
        }
    }
    // The step-0 evaluation is drawn at the left edge of the log axis, labelled 0.
    let val = std::fs::read_to_string(dir.path().join("report/val_loss.svg")).unwrap();
    assert!(val.contains(r#"<circle class="marker" cx="72.0""#), "step 0 at the axis' left edge");
    assert!(val.contains(">0</text>"));
    // Long group names are wrapped in the legend, not cut.
    assert!(val.contains("an_idea_with_a_long_name") && !val.contains('…'));
}
