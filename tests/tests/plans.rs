//! Training plans: a run goes through its stages in order, each with its own data mixture and
//! schedule, and its stats say which stage every row belongs to.

use lmhost_tests::{built, runs, SMALL_MODEL};

fn run_baseline(dir: &std::path::Path, extra: &[&str]) -> lmhost_tests::Ran {
    let mut args = vec!["run", "baseline"];
    args.extend(SMALL_MODEL);
    args.extend(["eval_every=2", "log_every=1", "warmup=1"]);
    args.extend(extra);
    built().lmhost(dir, &args)
}

#[test]
fn a_two_stage_plan_switches_data_and_schedule_at_the_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let poems = dir.path().join("poems");
    std::fs::create_dir(&poems).unwrap();
    for i in 0..3 {
        let text =
            format!("roses are red, violets are blue, poem number {i} is written for you.\n").repeat(200);
        std::fs::write(poems.join(format!("p{i}.txt")), text).unwrap();
    }
    // 256 tokens per step: stage one is 3 steps, stage two 4 (1000 tokens round up).
    let plan = format!(
        "[[stage]]\nname = \"plain\"\ntokens = 768\ndata = [{{ source = \"shakespeare\" }}]\n\n\
         [[stage]]\nname = \"mixed\"\ntokens = 1000\nlr = 2e-4\nschedule = \"constant\"\nwarmup = 0\n\
         data = [{{ source = \"shakespeare\", weight = 1 }}, {{ source = \"text:{}\", weight = 1 }}]\n",
        poems.display()
    );
    std::fs::write(dir.path().join("plan.toml"), plan).unwrap();
    let ran = run_baseline(dir.path(), &["plan=plan.toml"]);
    assert!(ran.success(), "{}", ran.stderr());
    let out = ran.stdout();
    assert!(out.contains("stage:plain steps:1..3") && out.contains("stage:mixed steps:4..7"), "{out}");
    assert!(out.contains("step:4/7 stage:mixed loss:"), "{out}");

    let run = &runs(dir.path())[0];
    assert_eq!(run.status(), "finished");
    assert_eq!(run.record["config"]["run"]["steps"], 7);
    assert_eq!(run.record["plan"]["stages"][1]["first_step"], 4);
    assert_eq!(run.record["plan"]["plan"]["stage"][1]["lr"], 2e-4);
    let stats = run.stats();
    let train: Vec<_> = stats.split(reports::Split::Train).collect();
    assert_eq!(train.len(), 7);
    for row in &train {
        let expected = if row.step <= 3 { "plain" } else { "mixed" };
        assert_eq!(row.stage.as_deref(), Some(expected), "step {}", row.step);
    }
    assert!(train[3..].iter().all(|r| r.lr == Some(2e-4)), "the second stage's own constant lr");
    assert!(train[0].lr.unwrap() > 2e-4, "the run's lr in the first stage");
    // Validation stays on the run's dataset, so the run compares with any other.
    assert_eq!(stats.split(reports::Split::Val).count(), 5);

    // The plan sets the steps; giving them as well is refused.
    let refused = run_baseline(dir.path(), &["plan=plan.toml", "steps=3"]);
    assert!(!refused.success());
    assert!(refused.stderr().contains("steps follows from the plan"), "{}", refused.stderr());
    let missing = run_baseline(dir.path(), &["plan=nope.toml"]);
    assert!(missing.stderr().contains("cannot read the plan nope.toml"), "{}", missing.stderr());
}

#[test]
fn a_one_stage_plan_on_the_runs_own_data_trains_exactly_like_no_plan() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("plan.json"),
        r#"{"stage": [{"name": "all", "tokens": 1280, "data": [{"source": "shakespeare"}]}]}"#,
    )
    .unwrap();
    let planned = run_baseline(dir.path(), &["plan=plan.json"]);
    assert!(planned.success(), "{}", planned.stderr());
    let plain = run_baseline(dir.path(), &["steps=5", "--retrain-baseline"]);
    assert!(plain.success(), "{}", plain.stderr());
    let runs = runs(dir.path());
    let losses = |i: usize| -> Vec<(u64, Option<f64>, Option<f64>)> {
        runs[i].stats().split(reports::Split::Train).map(|r| (r.step, r.loss, r.lr)).collect()
    };
    assert_eq!(losses(0).len(), 5);
    assert_eq!(losses(0), losses(1));
}
