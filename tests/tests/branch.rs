//! `lmhost branch`: children start from the parent's checkpoint and differ only in data order.

use lmhost_tests::{built, runs, SMALL_MODEL};

#[test]
fn children_share_the_parents_past_and_differ_in_their_future() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "baseline", "steps=6", "checkpoint_every=3", "eval_every=3"];
    args.extend(SMALL_MODEL);
    assert!(built().lmhost(dir.path(), &args).success());
    let parent = runs(dir.path())[0].path.clone();

    let missing = built().lmhost(dir.path(), &["branch", parent.to_str().unwrap(), "--at", "4"]);
    assert!(!missing.success());
    assert!(
        missing.stderr().contains("no checkpoint at step 4 (it has: step_000000.safetensors, step_000003"),
        "{}",
        missing.stderr()
    );
    let model = built().lmhost(dir.path(), &["branch", parent.to_str().unwrap(), "--at", "3", "n_layer=2"]);
    assert!(model.stderr().contains("a branch keeps the run's model"), "{}", model.stderr());

    let ran =
        built().lmhost(dir.path(), &["branch", parent.to_str().unwrap(), "--at", "3", "--children", "2"]);
    assert!(ran.success(), "{}", ran.stderr());
    let all = runs(dir.path());
    assert_eq!(all.len(), 3);
    let losses = |i: usize| -> Vec<(u64, Option<f64>)> {
        all[i].stats().split(reports::Split::Train).map(|r| (r.step, r.loss)).collect()
    };
    let (p, a, b) = (losses(0), losses(1), losses(2));
    assert_eq!((a.len(), b.len()), (6, 6));
    assert_eq!(a[..3], p[..3], "the shared past");
    assert_eq!(b[..3], p[..3]);
    assert_ne!(a[3..], p[3..], "another data order");
    assert_ne!(a[3..], b[3..]);
    for (child, seed) in [(&all[1], 2), (&all[2], 3)] {
        assert_eq!(child.status(), "finished");
        assert_eq!(child.record["branch"]["step"], 3);
        assert_eq!(child.record["config"]["run"]["seed"], seed);
    }

    // At step 0 a child shares only the initialisation.
    let ran =
        built().lmhost(dir.path(), &["branch", parent.to_str().unwrap(), "--at", "0", "--children", "1"]);
    assert!(ran.success(), "{}", ran.stderr());
    let all = runs(dir.path());
    let child = all.iter().find(|r| r.record["branch"]["step"] == 0).unwrap();
    assert_eq!(child.val_losses()[0], all[0].val_losses()[0], "the same initialisation");
    let first = child.stats().split(reports::Split::Train).next().unwrap().loss;
    assert_ne!(first, p[0].1, "another data order from the first step");
}

#[test]
fn interpolating_two_children_measures_the_path_between_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "baseline", "steps=4", "checkpoint_every=2", "eval_every=2"];
    args.extend(SMALL_MODEL);
    assert!(built().lmhost(dir.path(), &args).success());
    let parent = runs(dir.path())[0].path.clone();
    assert!(built().lmhost(dir.path(), &["branch", parent.to_str().unwrap(), "--at", "2"]).success());
    let all = runs(dir.path());
    let (a, b) = (all[1].path.to_str().unwrap(), all[2].path.to_str().unwrap());
    let ran = built().lmhost(
        dir.path(),
        &["interpolate", a, b, "--points", "5", "--windows", "16", "--split", "both", "--out", "lmc"],
    );
    assert!(ran.success(), "{}", ran.stderr());
    let out = ran.stdout();
    assert!(out.contains("barrier:val ") && out.contains("barrier:train "), "{out}");
    let table = arrow_ipc::reader::StreamReader::try_new(
        std::fs::File::open(dir.path().join("lmc/interpolation.arrows")).unwrap(),
        None,
    )
    .unwrap()
    .next()
    .unwrap()
    .unwrap();
    assert_eq!(table.num_rows(), 10);
    let loss =
        table.column_by_name("loss").unwrap().as_any().downcast_ref::<arrow_array::Float64Array>().unwrap();
    // α = 0 and α = 1 are the children themselves: their own final validation losses.
    let final_val = |i: usize| all[i].val_losses().last().copied().unwrap();
    assert!((loss.value(0) - final_val(1)).abs() < 1e-9, "{} vs {}", loss.value(0), final_val(1));
    assert!((loss.value(8) - final_val(2)).abs() < 1e-9, "{} vs {}", loss.value(8), final_val(2));
    assert!(dir.path().join("lmc/interpolation.png").is_file());

    // `lmhost compare` given the table shows the path and the barrier beside the runs.
    let parent_path = parent.to_str().unwrap();
    let ran = built().lmhost(dir.path(), &["compare", parent_path, a, b, "lmc", "--out", "report"]);
    assert!(ran.success(), "{}", ran.stderr());
    let md = std::fs::read_to_string(dir.path().join("report/report.md")).unwrap();
    assert!(md.contains("## Linear mode connectivity"), "{md}");
    let numbers: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("report/report.json")).unwrap())
            .unwrap();
    let barrier = &numbers["interpolations"][0]["barriers"]["val"];
    assert!((barrier["loss_a"].as_f64().unwrap() - final_val(1)).abs() < 1e-9, "{barrier}");
    assert!(barrier["barrier"].as_f64().unwrap() >= 0.0);
    assert!(barrier["above_line"].as_f64().unwrap() >= 0.0);
    assert_eq!(numbers["interpolations"][0]["branched_at"], 2, "both children of the parent at step 2");
    let svg = std::fs::read_to_string(dir.path().join("report/interpolation.svg")).unwrap();
    assert!(svg.contains("branched at step 2: "), "the path is named by its branch step");
    let html = std::fs::read_to_string(dir.path().join("report/report.html")).unwrap();
    assert!(html.contains("linear mode connectivity: loss along"));

    let mut other = vec!["run", "baseline", "steps=2", "n_layer=2"];
    other.extend(&SMALL_MODEL[1..]);
    // The new folder, found by difference: runs finished within one second sort by seed, not time.
    let before: Vec<_> = runs(dir.path()).into_iter().map(|r| r.path).collect();
    assert!(built().lmhost(dir.path(), &other).success());
    let wider = runs(dir.path()).into_iter().map(|r| r.path).find(|p| !before.contains(p)).unwrap();
    let refused = built().lmhost(dir.path(), &["interpolate", a, wider.to_str().unwrap()]);
    assert!(!refused.success() && refused.stderr().contains("one architecture"), "{}", refused.stderr());
}
