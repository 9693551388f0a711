//! The run store: one folder per run under `runs/`, holding `run.json` (what ran, written before
//! step 0 and updated as the status changes), `stats.arrows`, `checkpoints/` and `worker.log`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{ArmConfig, Request};
use crate::plugin::PluginSource;

/// The format of `run.json`; bump on incompatible changes.
pub const RUN_FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Folder written, worker not started yet.
    Pending,
    Running,
    Finished,
    /// Loss or gradient became NaN or infinite; training stopped, stats kept.
    Diverged,
    /// The plugin or the worker failed; stats so far kept.
    Failed,
    Interrupted,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "pending",
            Status::Running => "running",
            Status::Finished => "finished",
            Status::Diverged => "diverged",
            Status::Failed => "failed",
            Status::Interrupted => "interrupted",
        }
    }
}

/// Which side of the comparison a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arm {
    Baseline,
    Experiment,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginRecord {
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub variant: Option<String>,
    pub source: PluginSource,
    /// sha256 of the plugin library (absent for the built-in baseline).
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HostRecord {
    pub version: String,
    /// sha256 of the lmhost executable: a rebuilt host (say, a changed kit) never reuses a run.
    pub binary_sha256: Option<String>,
    pub cuda: bool,
    pub os: String,
    pub arch: String,
    pub cpu_model: Option<String>,
    pub cpus: usize,
    /// How lmhost was invoked.
    pub command: Vec<String>,
    /// Environment overrides that change a run's numbers (`LMHOST_PLAIN_KERNELS`,
    /// `LMHOST_SHARDS`), where set; part of the fingerprint.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub numerics_env: BTreeMap<String, String>,
    /// What the f32 matrix products were computed with (`gemm`, or the BLAS's own description):
    /// another library rounds differently, so it is part of the fingerprint.
    #[serde(default = "gemm")]
    pub matmul: String,
}

/// Runs recorded before the backend was: gemm was the only one.
fn gemm() -> String {
    lmhost_kit::candle::lmhost::matmul::Backend::GEMM.name.into_owned()
}

impl HostRecord {
    pub fn current() -> Self {
        Self {
            version: env!("CARGO_PKG_VERSION").into(),
            binary_sha256: std::env::current_exe().ok().and_then(|exe| sha256_file(&exe).ok()),
            cuda: cfg!(feature = "cuda"),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            cpu_model: cpu_model(),
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            command: std::env::args().collect(),
            numerics_env: lmhost_kit::kernels::numerics_env(),
            matmul: lmhost_kit::kernels::matmul_backend().into(),
        }
    }
}

/// The processor's name, where the OS tells it (Linux: /proc/cpuinfo).
fn cpu_model() -> Option<String> {
    let info = fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("model name"))?;
    Some(line.split_once(':')?.1.trim().to_owned())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DataRecord {
    /// The token cache folder the worker reads.
    pub cache_dir: PathBuf,
    pub manifest: datasets::DataManifest,
}

/// Numbers derived once from the config and printed at the start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Derived {
    pub tokens_per_step: u64,
    pub accumulation: usize,
    pub total_tokens: u64,
    pub vocab_size: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunResult {
    pub steps: u64,
    pub tokens: u64,
    pub val_loss: Option<f64>,
    pub val_accuracy: Option<f64>,
    /// On the test split after the last step (runs with `test_fraction`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_loss: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_accuracy: Option<f64>,
    pub params_train: u64,
    pub params_prod: u64,
    /// Training FLOPs per token of the model's matrix products, as the plugin counted them
    /// (plugin-api ≥ 0.1.3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flops_per_token: Option<f64>,
    /// Training tokens per second of training time (evaluation and checkpoints excluded).
    pub tokens_per_s: f64,
    pub wall_s: f64,
    pub last_checkpoint: Option<String>,
}

/// `run.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub format: u32,
    pub id: String,
    pub arm: Arm,
    pub status: Status,
    pub created_at: String,
    pub updated_at: String,
    pub plugin: PluginRecord,
    pub host: HostRecord,
    pub request: Request,
    pub config: ArmConfig,
    pub data: DataRecord,
    /// The training plan, when the run follows one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<crate::plan::PlanRecord>,
    pub derived: Derived,
    /// Identifies what was trained (config, data, plugin): equal fingerprints, equal runs.
    pub fingerprint: String,
    pub result: Option<RunResult>,
    pub error: Option<String>,
    /// Each time the run was resumed: from which checkpoint, and how many stats rows measured
    /// after it were dropped (their steps are trained again).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resumes: Vec<ResumeRecord>,
    /// The run this one branched from (`lmhost branch`), and at which step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<BranchRecord>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchRecord {
    pub parent: PathBuf,
    pub step: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResumeRecord {
    pub at: String,
    pub from_step: u64,
    pub dropped_rows: usize,
    /// Host keys changed on resuming; they apply to every step after `from_step`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<crate::config::Override>,
}

impl ResumeRecord {
    /// How the stats mark rows trained after this resume's overrides, e.g.
    /// `resumed at step 100 with lr=3e-4`; none without overrides.
    pub fn mark(&self) -> Option<String> {
        (!self.overrides.is_empty()).then(|| {
            let keys: Vec<String> = self.overrides.iter().map(|o| format!("{}={}", o.key, o.value)).collect();
            format!("resumed at step {} with {}", self.from_step, keys.join(" "))
        })
    }
}

impl RunRecord {
    pub fn compute_fingerprint(&self) -> String {
        let identity = serde_json::json!({
            "config": self.config.identity(),
            "plugin": [&self.plugin.name, &self.plugin.version, &self.plugin.variant, &self.plugin.sha256],
            "data": [&self.data.manifest.tokenizer_fingerprint, &self.data.manifest.val_fingerprint, self.data.manifest.train_tokens],
            "host": [&self.host.version, &self.host.binary_sha256],
            "numerics_env": &self.host.numerics_env,
            "matmul": &self.host.matmul,
            "plan": self.plan.as_ref().map(|p| (&p.plan, &p.stages)),
        });
        hex(&Sha256::digest(identity.to_string()))
    }
}

/// A folder of runs.
pub struct RunStore {
    pub root: PathBuf,
}

impl RunStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// A new, empty run folder named `<time>-<name>[-<variant>]-s<seed>`.
    pub fn create_dir(&self, name: &str, variant: Option<&str>, seed: u64) -> Result<(String, PathBuf)> {
        fs::create_dir_all(&self.root).with_context(|| format!("cannot create {}", self.root.display()))?;
        let mut base = format!("{}-{name}", compact_timestamp());
        if let Some(v) = variant {
            base.push('-');
            base.push_str(v);
        }
        base.push_str(&format!("-s{seed}"));
        for n in 1.. {
            let id = if n == 1 { base.clone() } else { format!("{base}-{n}") };
            let dir = self.root.join(&id);
            match fs::create_dir(&dir) {
                Ok(()) => {
                    created_here().lock().unwrap_or_else(|e| e.into_inner()).push(canonical(&dir));
                    return Ok((id, dir));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
            }
        }
        unreachable!()
    }

    /// Whether this process created the run folder `dir` (what `--retrain-baseline` lets serve:
    /// a baseline the same command trained, however quickly).
    pub fn created_by_this_command(dir: &Path) -> bool {
        created_here().lock().unwrap_or_else(|e| e.into_inner()).contains(&canonical(dir))
    }

    /// Every run folder (one with a `run.json`) in this folder and in the sweep and study folders
    /// it holds, in name order.
    pub fn run_dirs(&self) -> Vec<PathBuf> {
        let subfolders = |dir: &Path| -> Vec<PathBuf> {
            let mut dirs: Vec<PathBuf> = fs::read_dir(dir)
                .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect())
                .unwrap_or_default();
            dirs.sort();
            dirs
        };
        let mut found = Vec::new();
        for dir in subfolders(&self.root) {
            if dir.join("run.json").is_file() {
                found.push(dir);
            } else {
                found.extend(subfolders(&dir).into_iter().filter(|d| d.join("run.json").is_file()));
            }
        }
        found
    }

    /// Every run with this fingerprint, oldest first, in this folder and in the sweep folders
    /// it holds (a folder of runs without a `run.json` of its own).
    pub fn twins(&self, fingerprint: &str) -> Vec<(PathBuf, RunRecord)> {
        let mut found: Vec<(PathBuf, RunRecord)> =
            self.run_dirs().into_iter().filter_map(|d| read_record(&d).ok().map(|r| (d, r))).collect();
        found.retain(|(_, r)| r.fingerprint == fingerprint);
        found.sort_by(|a, b| a.1.created_at.cmp(&b.1.created_at));
        found
    }
}

/// The lock of a run a worker is training: `<run>/lock`, held with `flock` for the worker's
/// life and holding its pid. The kernel releases it when the process ends however it ends, so a
/// killed run's lock is stale by itself; a second process that would write the same folder
/// (a resume, a branch into it) is refused while the lock is held.
pub struct RunLock {
    _file: fs::File,
}

impl RunLock {
    /// Takes the lock of `dir`, or says which process holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        use std::io::{Seek, Write};
        use std::os::fd::AsRawFd;
        let path = dir.join("lock");
        let mut file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        // Safety: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let pid = fs::read_to_string(&path).unwrap_or_default();
            anyhow::bail!(
                "{} is being trained by process {} right now; wait for it to end (or stop it) first",
                dir.display(),
                pid.trim()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        write!(file, "{}", std::process::id())?;
        Ok(Self { _file: file })
    }

    /// Fails, naming the process, when a live worker holds the lock of `dir`.
    pub fn check_free(dir: &Path) -> Result<()> {
        if dir.join("lock").is_file() {
            Self::acquire(dir)?; // dropped at once: only a test
        }
        Ok(())
    }
}

pub fn read_record(dir: &Path) -> Result<RunRecord> {
    let path = dir.join("run.json");
    let text = fs::read_to_string(&path)
        .with_context(|| format!("{} is not a run folder (no readable run.json)", dir.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is corrupt", path.display()))
}

/// Writes `run.json` through a temporary file and a rename, so it is never half-written.
pub fn write_record(dir: &Path, record: &RunRecord) -> Result<()> {
    let mut record = record.clone();
    record.updated_at = timestamp();
    let text = serde_json::to_string_pretty(&record).expect("run record serialises");
    write_atomic(&dir.join("run.json"), text.as_bytes())
}

/// Writes `path` through a temporary file beside it and a rename, so it is whole or absent. A
/// write that fails (a full disk) removes the temporary file, leaving the room it took, and the
/// error names `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let written = fs::write(&tmp, bytes)
        .and_then(|()| fs::File::open(&tmp).and_then(|f| f.sync_all()))
        .and_then(|()| fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let bytes = fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(hex(&Sha256::digest(&bytes)))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// UTC time as RFC 3339, e.g. `2026-11-22T09:30:00Z`.
pub fn timestamp() -> String {
    let (y, mo, d, h, mi, s) = utc_now();
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// The run folders this process created.
fn created_here() -> &'static std::sync::Mutex<Vec<PathBuf>> {
    static CREATED: std::sync::OnceLock<std::sync::Mutex<Vec<PathBuf>>> = std::sync::OnceLock::new();
    CREATED.get_or_init(Default::default)
}

fn canonical(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_owned())
}

/// UTC time for folder names, e.g. `20261122-093000`.
fn compact_timestamp() -> String {
    let (y, mo, d, h, mi, s) = utc_now();
    format!("{y:04}{mo:02}{d:02}-{h:02}{mi:02}{s:02}")
}

fn utc_now() -> (i64, u32, u32, u64, u64, u64) {
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil date from days since 1970-01-01 (H. Hinnant, "chrono-Compatible Low-Level Date Algorithms").
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d, rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        let t = timestamp();
        assert_eq!(t.len(), 20, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }

    #[test]
    fn run_folders_never_collide() {
        let dir = tempfile::tempdir().unwrap();
        let store = RunStore::new(dir.path());
        let (a, _) = store.create_dir("baseline", None, 1).unwrap();
        let (b, _) = store.create_dir("baseline", None, 1).unwrap();
        assert_ne!(a, b);
        assert!(a.ends_with("-baseline-s1"));
    }
}
