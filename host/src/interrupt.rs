//! Ctrl-C, and SIGTERM (what Slurm sends on `scancel` and before a time limit). The first asks
//! the run to stop after the step in progress: the worker writes a checkpoint, flushes the stats
//! and marks the run `interrupted`, and `lmhost resume` continues it later. A second exits at
//! once, the run marked `interrupted` first; nothing already written is torn even then, because
//! checkpoints and `run.json` are renamed into place and stats are appended in whole batches.
//!
//! Workers run in their own process group, so a terminal's Ctrl-C reaches the orchestrator only,
//! which passes each one on to the worker training at that moment. Slurm signals every process
//! of the job, so a worker may get a SIGTERM and the orchestrator's forward of it together: a
//! second signal within a second of the first counts as the same one.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// The worker process training now (0: none).
static WORKER: AtomicI32 = AtomicI32::new(0);
/// When the first signal came, and (in a worker) the run it trains.
static FIRST: OnceLock<Instant> = OnceLock::new();
static RUN: Mutex<Option<PathBuf>> = Mutex::new(None);

/// A signal after the first, more than a second later (the same signal sent to a process twice,
/// by Slurm and by the orchestrator, is one).
fn again() -> bool {
    let first = *FIRST.get_or_init(Instant::now);
    REQUESTED.swap(true, Ordering::SeqCst) && first.elapsed() > Duration::from_secs(1)
}

/// In the orchestrator: pass Ctrl-C on to the worker, say what happens, exit at the second.
pub fn install_for_orchestrator() {
    let _ = ctrlc::set_handler(|| {
        let again = again();
        forward();
        if again {
            std::process::exit(130);
        }
        eprintln!("stopping after the step in progress, with a checkpoint (Ctrl-C again to stop at once)");
    });
}

/// In a worker: note the request; at the second, mark the run interrupted and exit.
pub fn install_for_worker() {
    let _ = ctrlc::set_handler(|| {
        if again() {
            if let Some(dir) = RUN.lock().ok().and_then(|r| r.clone()) {
                mark_interrupted(&dir);
            }
            std::process::exit(130);
        }
    });
}

/// The run this worker trains (what a second signal marks as interrupted).
pub fn set_run(dir: &Path) {
    if let Ok(mut run) = RUN.lock() {
        *run = Some(dir.to_owned());
    }
}

fn mark_interrupted(dir: &Path) {
    if let Ok(mut record) = crate::run_store::read_record(dir) {
        record.status = crate::run_store::Status::Interrupted;
        record.error = Some(format!(
            "stopped at once by a second interrupt, without a checkpoint; `lmhost resume {}` continues from the last one",
            dir.display()
        ));
        let _ = crate::run_store::write_record(dir, &record);
    }
}

/// Whether Ctrl-C was pressed.
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}

/// Registers the worker that Ctrl-C goes to (`None` when it has exited).
pub fn set_worker(pid: Option<u32>) {
    WORKER.store(pid.map_or(0, |p| p as i32), Ordering::SeqCst);
}

fn forward() {
    let pid = WORKER.load(Ordering::SeqCst);
    if pid > 0 {
        // Safety: kill only sends a signal; a pid that has exited makes it fail harmlessly.
        unsafe {
            libc::kill(pid, libc::SIGINT);
        }
    }
}
