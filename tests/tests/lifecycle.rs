//! A run's lifecycle under the things that go wrong: a resume that cannot work leaves the run
//! as it was, a live run cannot be written by a second process (and a killed one's lock is
//! stale), SIGTERM stops a run as Ctrl-C does, a second interrupt still records the stop, a sweep
//! started again resumes its interrupted run, a full disk leaves no partial checkpoint and a
//! record of the failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lmhost_tests::{built, run_folders, runs, RunDir, SMALL_MODEL};

fn run_json(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("run.json")).unwrap()
}

fn finished(dir: &Path, extra: &[&str]) -> RunDir {
    let mut args = vec!["run", "baseline", "steps=6", "checkpoint_every=3", "eval_every=3"];
    args.extend(SMALL_MODEL);
    args.extend(extra);
    let ran = built().lmhost(dir, &args);
    assert!(ran.success(), "{}", ran.stderr());
    runs(dir).remove(0)
}

/// `lmhost ARGS` started in the background in `dir`.
fn spawn(dir: &Path, args: &[&str]) -> Child {
    Command::new(built().lmhost_path())
        .args(args)
        .current_dir(dir)
        .env("LMHOST_CACHE", built().cache_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// Waits until a run under `dir/runs` is training (its worker holds the lock and it has logged
/// `rows` stats rows); returns the run folder and the worker's pid.
fn wait_training(dir: &Path, rows: usize) -> (PathBuf, i32) {
    wait_training_in(&dir.join("runs"), rows)
}

/// [`wait_training`] for the runs directly under `folder` (a sweep's, say).
fn wait_training_in(folder: &Path, rows: usize) -> (PathBuf, i32) {
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < Duration::from_secs(120), "the run never started training");
        if let Some(run) = run_folders(folder).into_iter().next() {
            let pid = std::fs::read_to_string(run.path.join("lock")).unwrap_or_default();
            let logged =
                reports::read_stats(&run.path.join("stats.arrows")).map(|s| s.rows.len()).unwrap_or(0);
            if let (Ok(pid), true) = (pid.trim().parse::<i32>(), logged >= rows) {
                return (run.path, pid);
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn signal(pid: i32, sig: &str) {
    assert!(Command::new("kill").args(["-s", sig, &pid.to_string()]).status().unwrap().success());
}

#[test]
fn a_resume_from_a_checkpoint_cut_short_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let run = finished(dir.path(), &[]);
    let last = run.path.join("checkpoints/step_000006.safetensors");
    let bytes = std::fs::read(&last).unwrap();
    std::fs::write(&last, &bytes[..bytes.len() / 2]).unwrap();
    let before = run_json(&run.path);
    let reports = || std::fs::read_dir(dir.path().join("reports")).map(|rd| rd.count()).unwrap_or(0);
    let reports_before = reports();
    let ran = built().lmhost(dir.path(), &["resume", run.path.to_str().unwrap(), "steps=9"]);
    assert!(!ran.success());
    let line = ran.error_lines().join(" ");
    assert!(
        line.contains("step_000006.safetensors is not a whole checkpoint") && line.contains("--from-step 3"),
        "{line}"
    );
    assert_eq!(
        run_json(&run.path),
        before,
        "run.json untouched: status, config and fingerprint as they were"
    );
    assert!(!ran.stdout().contains("report:") && reports() == reports_before, "no report");
    let ran =
        built().lmhost(dir.path(), &["resume", run.path.to_str().unwrap(), "steps=9", "--from-step", "3"]);
    assert!(ran.success(), "{}", ran.stderr());
    let record: serde_json::Value = serde_json::from_str(&run_json(&run.path)).unwrap();
    assert_eq!(
        (record["status"].as_str(), record["resumes"][0]["from_step"].as_u64()),
        (Some("finished"), Some(3))
    );
}

#[test]
fn a_resume_under_other_numerics_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = finished(dir.path(), &[]);
    let before = run_json(&run.path);
    let ran = built().lmhost_with_env(
        dir.path(),
        &["resume", run.path.to_str().unwrap(), "steps=9"],
        &[("LMHOST_SHARDS", "1")],
    );
    assert!(!ran.success());
    assert!(ran.error_lines()[0].contains("LMHOST_SHARDS=1"), "{:?}", ran.error_lines());
    assert_eq!(run_json(&run.path), before);
}

#[test]
fn a_run_records_its_matrix_products_and_resumes_only_with_them() {
    let dir = tempfile::tempdir().unwrap();
    let run = finished(dir.path(), &[]);
    let before = run_json(&run.path);
    let record: serde_json::Value = serde_json::from_str(&before).unwrap();
    let matmul = record["host"]["matmul"].as_str().expect("host.matmul").to_owned();
    let version = built().lmhost(dir.path(), &["--version"]);
    assert!(version.stdout().contains(&format!("matrix products: {matmul})")), "{}", version.stdout());
    // The other backend: gemm where a BLAS trained the run, a BLAS (perhaps not installed:
    // then refused for that) where gemm did.
    let other = if matmul == "gemm" { "openblas" } else { "gemm" };
    let ran = built().lmhost_with_env(
        dir.path(),
        &["resume", run.path.to_str().unwrap(), "steps=9"],
        &[("LMHOST_BLAS", other)],
    );
    assert!(!ran.success());
    assert!(ran.error_lines()[0].contains("LMHOST_BLAS"), "{:?}", ran.error_lines());
    assert_eq!(run_json(&run.path), before);
}

#[test]
fn a_live_run_is_locked_and_a_killed_runs_lock_is_stale() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "baseline", "steps=3000", "checkpoint_every=20", "log_every=10"];
    args.extend(SMALL_MODEL);
    let mut child = spawn(dir.path(), &args);
    let (run, pid) = wait_training(dir.path(), 20);
    let refused = built().lmhost(dir.path(), &["resume", run.to_str().unwrap()]);
    assert!(!refused.success());
    let line = refused.error_lines().join(" ");
    assert!(line.contains(&format!("being trained by process {pid}")), "{line}");
    // Killed without a word: the kernel drops its lock, so the next resume proceeds.
    signal(pid, "KILL");
    child.wait().unwrap();
    assert!(
        std::fs::read_to_string(run.join("lock")).unwrap().trim() == pid.to_string(),
        "the stale lock is still there"
    );
    let resumed = built().lmhost(dir.path(), &["resume", run.to_str().unwrap(), "steps=60"]);
    assert!(resumed.success(), "{}", resumed.stderr());
}

#[test]
fn sigterm_stops_a_run_with_a_checkpoint_as_ctrl_c_does() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "baseline", "steps=3000", "log_every=10"];
    args.extend(SMALL_MODEL);
    let mut child = spawn(dir.path(), &args);
    let (run, pid) = wait_training(dir.path(), 20);
    // What Slurm does at scancel and before a time limit: SIGTERM to every process of the job.
    signal(pid, "TERM");
    signal(child.id() as i32, "TERM");
    assert!(!child.wait().unwrap().success());
    let record: serde_json::Value = serde_json::from_str(&run_json(&run)).unwrap();
    assert_eq!(record["status"], "interrupted", "{record}");
    let checkpoint = record["result"]["last_checkpoint"].as_str().expect("a checkpoint at the stop");
    assert!(run.join(checkpoint).is_file());
    let resumed = built().lmhost(dir.path(), &["resume", run.to_str().unwrap(), "steps=100"]);
    assert!(resumed.success(), "{}", resumed.stderr());
}

#[test]
fn a_second_interrupt_stops_at_once_and_still_marks_the_run() {
    let dir = tempfile::tempdir().unwrap();
    // Steps of 32k tokens (≈ 3 s on an AVX-512 EPYC, ≈ 10 s on an AVX2 one), so that the second
    // interrupt, 1.3 s after the first (sent just after a step's row is logged), lands inside
    // the same step: 8k-token steps took 0.8 s there and the run had stopped before it.
    let mut child = spawn(
        dir.path(),
        &[
            "run",
            "baseline",
            "--preset",
            "tiny",
            "steps=50",
            "batch_size=256",
            "micro_batch_size=8",
            "log_every=1",
        ],
    );
    let (run, pid) = wait_training(dir.path(), 2);
    signal(pid, "INT");
    std::thread::sleep(Duration::from_millis(1300));
    signal(pid, "INT");
    child.wait().unwrap();
    let record: serde_json::Value = serde_json::from_str(&run_json(&run)).unwrap();
    assert_eq!(record["status"], "interrupted", "not left `running`: {record}");
}

#[test]
fn a_sweep_started_again_resumes_its_interrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["run", "baseline", "seeds=2", "steps=1500", "log_every=10"];
    args.extend(SMALL_MODEL);
    let mut child = spawn(dir.path(), &args);
    let start = Instant::now();
    let sweep = loop {
        assert!(start.elapsed() < Duration::from_secs(120), "the sweep never started");
        let found = std::fs::read_dir(dir.path().join("runs")).ok().and_then(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("sweep-"))
        });
        if let Some(sweep) = found {
            break sweep;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (first, _) = wait_training_in(&sweep, 5);
    // Ctrl-C to the sweep: its run checkpoints and stops, the sweep stops too.
    signal(child.id() as i32, "INT");
    assert!(!child.wait().unwrap().success());
    let again = built().lmhost(dir.path(), &args);
    assert!(again.success(), "{}", again.stderr());
    let id = first.file_name().unwrap().to_string_lossy().into_owned();
    let resuming = again.stdout().lines().any(|l| l.contains("resuming the interrupted") && l.ends_with(&id));
    assert!(resuming, "{}", again.stdout());
    let folders = run_folders(&sweep);
    assert_eq!(folders.len(), 2, "one folder per seed, the interrupted one continued");
    assert!(folders.iter().all(|r| r.record["status"] == "finished"), "both finished");
    let resumed = folders.iter().find(|r| r.path == first).expect("the interrupted run");
    assert_eq!(resumed.record["resumes"].as_array().map(Vec::len), Some(1), "{}", resumed.record);
}

#[test]
fn a_full_disk_leaves_no_partial_checkpoint_and_records_which_file_failed() {
    let dir = tempfile::tempdir().unwrap();
    // The token cache first, with room to write it.
    let mut dry = vec!["run", "baseline", "--dry-run"];
    dry.extend(SMALL_MODEL);
    assert!(built().lmhost(dir.path(), &dry).success());
    let mut args: Vec<String> =
        ["run", "baseline", "steps=4", "checkpoint_every=2"].iter().map(|s| s.to_string()).collect();
    args.extend(SMALL_MODEL.iter().map(|s| s.to_string()));
    // A file-size limit stands for the disk: the checkpoint (megabytes) cannot be written, the
    // run's record (kilobytes) can. SIGXFSZ ignored, so the write fails instead of the process.
    let script =
        format!("trap '' XFSZ; ulimit -f 1024; exec {} {}", built().lmhost_path().display(), args.join(" "));
    let out = Command::new("bash")
        .args(["-c", &script])
        .current_dir(dir.path())
        .env("LMHOST_CACHE", built().cache_dir())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let run = runs(dir.path()).remove(0);
    assert_eq!(run.status(), "failed");
    let error = run.record["error"].as_str().unwrap();
    assert!(error.contains("cannot write") && error.contains("step_000000.safetensors"), "{error}");
    let leftovers: Vec<_> = std::fs::read_dir(run.path.join("checkpoints"))
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftovers.is_empty(), "no partial checkpoint left: {leftovers:?}");
}
