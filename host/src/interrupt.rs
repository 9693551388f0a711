//! Ctrl-C. The first asks the run to stop after the step in progress: the worker writes a
//! checkpoint, flushes the stats and marks the run `interrupted`, and `lmhost resume` continues
//! it later. A second Ctrl-C exits at once; nothing already written is torn even then, because
//! checkpoints and `run.json` are renamed into place and stats are appended in whole batches.
//!
//! Workers run in their own process group, so a terminal's Ctrl-C reaches the orchestrator only,
//! which passes each one on to the worker training at that moment: every process sees each
//! Ctrl-C exactly once.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

static REQUESTED: AtomicBool = AtomicBool::new(false);
/// The worker process training now (0: none).
static WORKER: AtomicI32 = AtomicI32::new(0);

/// In the orchestrator: pass Ctrl-C on to the worker, say what happens, exit at the second.
pub fn install_for_orchestrator() {
    let _ = ctrlc::set_handler(|| {
        let again = REQUESTED.swap(true, Ordering::SeqCst);
        forward();
        if again {
            std::process::exit(130);
        }
        eprintln!("stopping after the step in progress, with a checkpoint (Ctrl-C again to stop at once)");
    });
}

/// In a worker: note the request; exit at the second.
pub fn install_for_worker() {
    let _ = ctrlc::set_handler(|| {
        if REQUESTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
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
