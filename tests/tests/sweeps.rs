//! Sweeps: a grid run end to end that skips its finished runs when started again, and the Slurm
//! job array for the same grid, whose every index runs the right configuration.

use std::path::{Path, PathBuf};
use std::process::Command;

use lmhost_tests::{built, run_folders, SMALL_MODEL};

fn sweep_args<'a>(plugin: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![plugin.to_str().unwrap()];
    args.extend(SMALL_MODEL);
    args.extend(["steps=4", "eval_every=2", "log_every=2", "lr=1e-3,2e-3", "seeds=2"]);
    args.extend(extra);
    args
}

fn sweep_folder(dir: &Path) -> PathBuf {
    lmhost_tests::only_folder(dir, "")
}

#[test]
fn a_sweep_started_again_trains_only_what_did_not_finish() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = built().plugin("value_norm");
    let mut args = vec!["run"];
    args.extend(sweep_args(&plugin, &[]));
    let ran = built().lmhost(dir.path(), &args);
    assert!(ran.success(), "{}", ran.stderr());
    let out = ran.stdout();
    assert!(out.contains("sweep:4/4 ") && out.contains("lr=2e-3 seed=2"), "{out}");
    let folder = sweep_folder(dir.path());
    let first = run_folders(&folder);
    // Two learning rates × two seeds, each with its own baseline (lr is the baseline's too).
    assert_eq!(first.len(), 8);
    assert!(first.iter().all(|r| r.status() == "finished"));
    assert_eq!(first.iter().filter(|r| r.arm() == "baseline").count(), 4);
    // One report over the whole sweep, each group tested against its own learning rate's baseline.
    let report = out.lines().find_map(|l| l.strip_prefix("report: ")).expect("a report");
    let md = std::fs::read_to_string(dir.path().join(report).with_file_name("report.md")).unwrap();
    assert!(md.contains("| value_norm/normv1_0 lr=0.001 | 2 | 1,2 |"), "{md}");
    assert!(md.contains("compared with the baseline whose settings match"), "{md}");
    assert_eq!(md.matches("paired t-test, n = 2/2").count(), 2, "{md}");

    // Interrupt the sweep after the fact: one run gone, one marked interrupted.
    let experiments: Vec<_> = first.iter().filter(|r| r.arm() == "experiment").collect();
    std::fs::remove_dir_all(&experiments[0].path).unwrap();
    let record = experiments[1].path.join("run.json");
    let text = std::fs::read_to_string(&record).unwrap().replace("\"finished\"", "\"interrupted\"");
    std::fs::write(&record, text).unwrap();

    let mut dry = args.clone();
    dry.push("--dry-run");
    let listed = built().lmhost(dir.path(), &dry).stdout();
    assert_eq!(listed.matches("(to train)").count(), 1, "{listed}");
    assert_eq!(listed.matches("(interrupted, would resume: ").count(), 1, "{listed}");
    assert_eq!(listed.matches("(finished: ").count(), 6, "{listed}");
    assert_eq!(run_folders(&folder).len(), 7, "a dry run writes nothing");

    // The missing run is trained anew, the interrupted one resumed in its own folder.
    let again = built().lmhost(dir.path(), &args);
    assert!(again.success(), "{}", again.stderr());
    let out = again.stdout();
    assert_eq!(out.matches(" reusing ").count(), 6, "{out}");
    assert_eq!(out.matches("arm:value_norm run:").count(), 1, "{out}");
    assert_eq!(out.matches("arm:value_norm resuming the interrupted ").count(), 1, "{out}");
    let after = run_folders(&folder);
    assert_eq!(after.len(), 8);
    assert_eq!(after.iter().filter(|r| r.status() == "finished").count(), 8);
}

fn bash(script: &Path, env: &[(&str, &str)], args: &[&str], path_prefix: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new("bash");
    cmd.arg(script).args(args).env("LMHOST_CACHE", built().cache_dir()).env_remove("SLURM_ARRAY_TASK_ID");
    for (k, v) in env {
        cmd.env(k, v);
    }
    if let Some(prefix) = path_prefix {
        cmd.env("PATH", format!("{}:{}", prefix.display(), std::env::var("PATH").unwrap()));
    }
    let out = cmd.current_dir(script.parent().unwrap()).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[test]
fn the_slurm_array_runs_each_configuration_once() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = built().plugin("value_norm");
    let mut args = vec!["sweep"];
    args.extend(sweep_args(&plugin, &["--emit", "slurm", "--out", "sweep.sh", "--partition", "cpu"]));
    let ran = built().lmhost(dir.path(), &args);
    assert!(ran.success(), "{}", ran.stderr());
    let script = dir.path().join("sweep.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("#SBATCH --array=0-7\n") && text.contains("#SBATCH --partition=cpu\n"), "{text}");
    let syntax = Command::new("bash").arg("-n").arg(&script).status().unwrap();
    assert!(syntax.success(), "the script is not valid bash:\n{text}");

    // Each index, asked for a dry run, names its own run: the four baselines, then the four experiments.
    let points = ["lr=1e-3 seed=1", "lr=1e-3 seed=2", "lr=2e-3 seed=1", "lr=2e-3 seed=2"];
    for index in 0..8 {
        let id = index.to_string();
        let (ok, out) = bash(&script, &[("SLURM_ARRAY_TASK_ID", &id)], &["--dry-run"], None);
        assert!(ok, "task {index}: {out}");
        let arms: Vec<&str> = out.lines().filter(|l| l.starts_with("dry-run arm:")).collect();
        assert_eq!(arms.len(), 1, "task {index} runs one arm: {out}");
        let (arm, point) =
            if index < 4 { ("baseline", points[index]) } else { ("value_norm", points[index - 4]) };
        assert!(arms[0].starts_with(&format!("dry-run arm:{arm}")), "task {index}: {}", arms[0]);
        assert!(
            arms[0].contains(&format!("steps=4 eval_every=2 log_every=2 {point} (to train)")),
            "task {index}: {}",
            arms[0]
        );
    }

    // Submitting: the array, then compare depending on it (sbatch stands in for the cluster's).
    let bin = dir.path().join("fake-bin");
    std::fs::create_dir(&bin).unwrap();
    let log = dir.path().join("sbatch.log");
    let fake = format!("#!/usr/bin/env bash\necho \"$*\" >> {}\necho 4242\n", log.display());
    std::fs::write(bin.join("sbatch"), fake).unwrap();
    Command::new("chmod").arg("+x").arg(bin.join("sbatch")).status().unwrap();
    let (ok, out) = bash(&script, &[], &[], Some(&bin));
    assert!(ok && out.contains("submitted array job 4242 (8 runs)"), "{out}");
    let calls = std::fs::read_to_string(&log).unwrap();
    let calls: Vec<&str> = calls.lines().collect();
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert!(
        calls[1].contains("--dependency=afterany:4242") && calls[1].contains("LMHOST_SWEEP_STAGE=compare")
    );

    // Two tasks for real, then the compare stage over what they left.
    for index in ["0", "4"] {
        let (ok, out) = bash(&script, &[("SLURM_ARRAY_TASK_ID", index)], &[], None);
        assert!(ok, "task {index}: {out}");
    }
    let folder = sweep_folder(dir.path());
    let trained = run_folders(&folder);
    assert_eq!(trained.iter().map(|r| r.arm()).collect::<Vec<_>>(), ["baseline", "experiment"]);
    assert!(trained.iter().all(|r| r.status() == "finished"));
    let (ok, out) =
        bash(&script, &[("SLURM_ARRAY_TASK_ID", "0"), ("LMHOST_SWEEP_STAGE", "compare")], &[], None);
    assert!(ok, "{out}");
    let name = folder.file_name().unwrap().to_str().unwrap();
    assert!(dir.path().join("reports").join(name).join("report.html").is_file(), "{out}");
}

#[test]
fn slurm_tasks_skip_finished_runs_resume_interrupted_ones_and_keep_their_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let plugin = built().plugin("value_norm");
    let mut args = vec!["sweep"];
    args.extend(sweep_args(&plugin, &["--emit", "slurm", "--out", "sweep.sh"]));
    assert!(built().lmhost(dir.path(), &args).success());
    let script = dir.path().join("sweep.sh");
    let text = std::fs::read_to_string(&script).unwrap();
    assert!(text.contains("#SBATCH --signal=TERM@120\n") && text.contains("#SBATCH --requeue\n"), "{text}");
    assert!(text.contains(r#"sbatch --parsable "$0" "$@""#), "the script passes its arguments on: {text}");
    // A task submitted twice (or requeued) trains its run once.
    for _ in 0..2 {
        let (ok, out) = bash(&script, &[("SLURM_ARRAY_TASK_ID", "4")], &[], None);
        assert!(ok, "{out}");
    }
    let folder = sweep_folder(dir.path());
    assert_eq!(run_folders(&folder).len(), 1, "the second submission reused the finished run");
    // A run stopped by the time limit's SIGTERM is interrupted; its requeued task resumes it.
    let run = &run_folders(&folder)[0];
    let record = run.path.join("run.json");
    let text = std::fs::read_to_string(&record).unwrap().replace("\"finished\"", "\"interrupted\"");
    std::fs::write(&record, text).unwrap();
    let (ok, out) = bash(&script, &[("SLURM_ARRAY_TASK_ID", "4")], &[], None);
    assert!(ok && out.contains("resuming the interrupted"), "{out}");
    assert_eq!(run_folders(&folder).len(), 1);
    assert_eq!(run_folders(&folder)[0].status(), "finished");
    // The script's own arguments reach the task (steps=5 here, the sweep's steps=4 otherwise).
    let (ok, out) = bash(&script, &[("SLURM_ARRAY_TASK_ID", "5")], &["steps=5", "--dry-run"], None);
    assert!(ok && out.contains("steps=5"), "{out}");
}
