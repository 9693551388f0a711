//! `lmhost resume`: a run stopped after a checkpoint continues from it, its stats rewound to that
//! checkpoint, and ends with exactly the numbers of a run that never stopped, plan stages too.

use std::path::{Path, PathBuf};

use lmhost_tests::{built, runs, SMALL_MODEL};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// Every number a step logs except the clock.
fn numbers(run: &Path) -> Vec<String> {
    let stats = reports::read_stats(&run.join("stats.arrows")).unwrap();
    stats
        .rows
        .iter()
        .map(|r| {
            format!(
                "{} {} {:?} {:?} {:?} {:?} {:?} {:?} {:?} {:?}",
                r.step, r.tokens, r.split, r.loss, r.accuracy, r.lr, r.grad_norm, r.metric, r.value, r.stage
            )
        })
        .collect()
}

/// Trains a run to its end, then makes a copy that looks stopped after step 3's checkpoint, its
/// stats running on past it as a killed run's do.
fn finished_and_stopped(dir: &Path, extra: &[&str]) -> (PathBuf, PathBuf) {
    let mut args =
        vec!["run", "baseline", "checkpoint_every=3", "eval_every=2", "log_every=1", "metrics_every=2"];
    args.extend(SMALL_MODEL);
    args.extend(extra);
    let ran = built().lmhost(dir, &args);
    assert!(ran.success(), "{}", ran.stderr());
    let whole = runs(dir)[0].path.clone();
    let stopped = dir.join("stopped");
    copy_dir(&whole, &stopped);
    // Stopped after step 3's checkpoint: the later ones never written.
    for entry in std::fs::read_dir(stopped.join("checkpoints")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_str().unwrap() > "step_000003.safetensors" {
            std::fs::remove_file(&path).unwrap();
        }
    }
    let record = stopped.join("run.json");
    let text = std::fs::read_to_string(&record).unwrap().replace("\"finished\"", "\"interrupted\"");
    std::fs::write(&record, text).unwrap();
    (whole, stopped)
}

#[test]
fn a_resumed_run_ends_with_the_numbers_of_one_that_never_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, stopped) = finished_and_stopped(dir.path(), &["steps=6"]);
    let ran = built().lmhost(dir.path(), &["resume", stopped.to_str().unwrap()]);
    assert!(ran.success(), "{}", ran.stderr());
    assert!(ran.stdout().contains("arm:baseline step:4/6"), "{}", ran.stdout());
    assert!(!ran.stdout().contains("step:3/6"), "steps up to the checkpoint are not trained again");
    assert_eq!(numbers(&stopped), numbers(&whole));
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stopped.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["status"], "finished");
    assert_eq!(record["resumes"][0]["from_step"], 3);
    assert!(
        record["resumes"][0]["dropped_rows"].as_u64().unwrap() >= 3,
        "the rows of steps 4–6 were rewound"
    );
    assert!(stopped.join("checkpoints/step_000006.safetensors").is_file());

    let again = built().lmhost(dir.path(), &["resume", stopped.to_str().unwrap()]);
    assert!(!again.success() && again.stderr().contains("already finished"), "{}", again.stderr());
}

#[test]
fn overrides_on_resume_are_recorded_and_mark_the_rows_they_changed() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, stopped) = finished_and_stopped(dir.path(), &["steps=6", "schedule=constant", "warmup=0"]);
    let path = stopped.to_str().unwrap();
    let model_key = built().lmhost(dir.path(), &["resume", path, "n_layer=3"]);
    assert!(!model_key.success() && model_key.stderr().contains("only host keys"), "{}", model_key.stderr());

    let ran = built().lmhost(dir.path(), &["resume", path, "lr=2e-4"]);
    assert!(ran.success(), "{}", ran.stderr());
    let (before, after) = (numbers(&whole), numbers(&stopped));
    let rows = reports::read_stats(&stopped.join("stats.arrows")).unwrap().rows;
    for row in &rows {
        let marked = row.stage.as_deref() == Some("resumed at step 3 with lr=2e-4");
        assert_eq!(marked, row.step > 3, "step {} is marked only when trained after the resume", row.step);
        if row.step > 3 && row.lr.is_some() {
            assert_eq!(row.lr, Some(2e-4));
        }
    }
    let kept = rows.iter().filter(|r| r.step <= 3).count();
    assert_eq!(after[..kept], before[..kept], "the rows up to the checkpoint are the original run's");
    assert_ne!(after[kept..], before[kept..]);
    let record: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(stopped.join("run.json")).unwrap()).unwrap();
    assert_eq!(record["resumes"][0]["overrides"][0]["key"], "lr");
    assert_eq!(record["config"]["run"]["lr"], 2e-4);

    // A finished run trains further when asked for more steps, and only then.
    let same = built().lmhost(dir.path(), &["resume", path, "lr=1e-4"]);
    assert!(!same.success() && same.stderr().contains("already finished"), "{}", same.stderr());
    let longer = built().lmhost(dir.path(), &["resume", path, "steps=8"]);
    assert!(longer.success(), "{}", longer.stderr());
    assert!(longer.stdout().contains("step:8/8"), "{}", longer.stdout());
    let rows = reports::read_stats(&stopped.join("stats.arrows")).unwrap().rows;
    let last = rows.iter().rfind(|r| r.step == 8).unwrap();
    assert_eq!(last.stage.as_deref(), Some("resumed at step 6 with steps=8"));
    assert_eq!(
        rows.iter().filter(|r| r.step == 6 && r.metric.is_none()).count(),
        2,
        "train and val rows of step 6 kept once"
    );
}

#[test]
fn a_resumed_plan_continues_in_the_right_stage_at_the_right_place() {
    let dir = tempfile::tempdir().unwrap();
    // 256 tokens per step: stage one is steps 1–4, stage two 5–7; the checkpoint at step 3.
    std::fs::write(
        dir.path().join("plan.toml"),
        "[[stage]]\nname = \"one\"\ntokens = 1024\ndata = [{ source = \"shakespeare\" }]\n\n\
         [[stage]]\nname = \"two\"\ntokens = 768\nlr = 3e-4\nschedule = \"constant\"\n\
         data = [{ source = \"shakespeare\", weight = 1 }, { source = \"shakespeare\", weight = 2 }]\n",
    )
    .unwrap();
    let (whole, stopped) = finished_and_stopped(dir.path(), &["plan=plan.toml"]);
    let ran = built().lmhost(dir.path(), &["resume", stopped.to_str().unwrap()]);
    assert!(ran.success(), "{}", ran.stderr());
    assert!(ran.stdout().contains("step:5/7 stage:two"), "{}", ran.stdout());
    assert_eq!(numbers(&stopped), numbers(&whole));
}

#[test]
fn ctrl_c_checkpoints_marks_the_run_interrupted_and_resume_finishes_it() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "baseline", "steps=120", "log_every=1", "eval_every=100"];
    args.extend(SMALL_MODEL);
    let mut child = Command::new(built().lmhost_path())
        .args(&args)
        .current_dir(dir.path())
        .env("LMHOST_CACHE", built().cache_dir())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut seen = String::new();
    // Once step 3 is logged, Ctrl-C (SIGINT to the orchestrator, as a terminal sends it).
    while !seen.contains("step:3/120") {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "the run ended early:\n{seen}");
        seen.push_str(&line);
    }
    let kill = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "an interrupted run exits non-zero:\n{rest}");
    assert!(rest.contains("status:interrupted") && rest.contains("lmhost resume"), "{rest}");

    let run = &runs(dir.path())[0];
    assert_eq!(run.status(), "interrupted");
    let steps: Vec<u64> = run.stats().split(reports::Split::Train).map(|r| r.step).collect();
    let last = *steps.last().unwrap();
    assert!((3..120).contains(&last), "stopped soon after the request, at step {last}");
    assert!(run.path.join(format!("checkpoints/step_{last:06}.safetensors")).is_file());

    let resumed = built().lmhost(dir.path(), &["resume", run.path.to_str().unwrap()]);
    assert!(resumed.success(), "{}", resumed.stderr());
    let run = &runs(dir.path())[0];
    assert_eq!(run.status(), "finished");
    let steps: Vec<u64> = run.stats().split(reports::Split::Train).map(|r| r.step).collect();
    assert_eq!(steps, (1..=120).collect::<Vec<_>>(), "every step once");
}

#[test]
fn checkpoints_keep_the_last_n_and_the_best() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "baseline", "steps=6", "checkpoint_every=1", "eval_every=1"];
    args.extend(SMALL_MODEL);
    args.extend(["keep_checkpoints=2", "keep_best=true"]);
    let ran = built().lmhost(dir.path(), &args);
    assert!(ran.success(), "{}", ran.stderr());
    let run = &runs(dir.path())[0];
    let mut names: Vec<String> = std::fs::read_dir(run.path.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["best.safetensors", "step_000005.safetensors", "step_000006.safetensors"]);
    // best.safetensors says in its header which step it holds: the lowest validation loss.
    let bytes = std::fs::read(run.path.join("checkpoints/best.safetensors")).unwrap();
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let best_step: u64 = header["__metadata__"]["lmhost.step"].as_str().unwrap().parse().unwrap();
    let val: Vec<(u64, f64)> = run
        .stats()
        .split(reports::Split::Val)
        .filter(|r| r.step > 0)
        .map(|r| (r.step, r.loss.unwrap()))
        .collect();
    let lowest = val.iter().min_by(|a, b| a.1.total_cmp(&b.1)).unwrap();
    assert_eq!(best_step, lowest.0, "{val:?}");
}
