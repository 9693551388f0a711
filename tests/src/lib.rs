//! Helpers for lmhost's end-to-end tests: build the workspace once (`cargo build --release
//! --workspace`, the same profile the tests themselves were built with, so nothing is rebuilt),
//! run the real `lmhost` binary on real plugin libraries in a scratch folder, and read back the
//! run folders it wrote.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

/// The workspace's release artifacts.
pub struct Built {
    pub release_dir: PathBuf,
    pub workspace_root: PathBuf,
}

/// Builds every binary and plugin once per test process.
pub fn built() -> &'static Built {
    static BUILT: OnceLock<Built> = OnceLock::new();
    BUILT.get_or_init(|| {
        // This test binary lives in <target>/release/deps/.
        let exe = std::env::current_exe().expect("test binary path");
        let release_dir = exe.parent().and_then(Path::parent).expect("target/release").to_owned();
        let target_dir = release_dir.parent().expect("target").to_owned();
        let workspace_root =
            Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_owned();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--workspace", "--target-dir"])
            .arg(&target_dir)
            .current_dir(&workspace_root)
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cargo build --release --workspace failed");
        Built { release_dir, workspace_root }
    })
}

impl Built {
    pub fn lmhost_path(&self) -> PathBuf {
        self.release_dir.join("lmhost")
    }

    /// A plugin library built from the crate `name`.
    pub fn plugin(&self, name: &str) -> PathBuf {
        self.release_dir.join(format!("lib{name}.so"))
    }

    /// The shared tokenizer and token cache of all tests (trained once, reused).
    pub fn cache_dir(&self) -> PathBuf {
        self.release_dir.parent().expect("target").join("lmhost-test-cache")
    }

    /// `lmhost ARGS` run in `dir`, with the shared test cache.
    pub fn lmhost(&self, dir: &Path, args: &[&str]) -> Ran {
        self.lmhost_with_env(dir, args, &[])
    }

    /// `lmhost ARGS` with extra environment variables.
    pub fn lmhost_with_env(&self, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Ran {
        let out = Command::new(self.lmhost_path())
            .args(args)
            .envs(env.iter().copied())
            .current_dir(dir)
            .env("LMHOST_CACHE", self.cache_dir())
            .env_remove("LMHOST_LOG")
            .output()
            .expect("run lmhost");
        eprintln!(
            "$ lmhost {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ran { output: out }
    }
}

/// A finished `lmhost` invocation, with what it printed.
pub struct Ran {
    pub output: Output,
}

impl Ran {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    pub fn success(&self) -> bool {
        self.output.status.success()
    }

    /// The `error: …` lines lmhost printed.
    pub fn error_lines(&self) -> Vec<String> {
        self.stderr().lines().filter(|l| l.starts_with("error:")).map(str::to_owned).collect()
    }
}

/// A run folder and its `run.json`.
pub struct RunDir {
    pub path: PathBuf,
    pub record: Value,
}

impl RunDir {
    pub fn arm(&self) -> &str {
        self.record["arm"].as_str().unwrap_or_default()
    }

    pub fn status(&self) -> &str {
        self.record["status"].as_str().unwrap_or_default()
    }

    pub fn stats(&self) -> reports::Stats {
        reports::read_stats(&self.path.join("stats.arrows")).expect("stats.arrows readable")
    }

    /// Validation losses in step order.
    pub fn val_losses(&self) -> Vec<f64> {
        self.stats().split(reports::Split::Val).filter_map(|r| r.loss).collect()
    }
}

/// Every run folder under `dir/runs`, oldest first.
pub fn runs(dir: &Path) -> Vec<RunDir> {
    run_folders(&dir.join("runs"))
}

/// Every run folder directly under `folder`, oldest first.
pub fn run_folders(folder: &Path) -> Vec<RunDir> {
    let mut out: Vec<RunDir> = std::fs::read_dir(folder)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter_map(|p| {
                    let text = std::fs::read_to_string(p.join("run.json")).ok()?;
                    Some(RunDir { record: serde_json::from_str(&text).ok()?, path: p })
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The one folder under `dir/runs` whose name starts with `prefix` (a sweep's, a study's).
pub fn only_folder(dir: &Path, prefix: &str) -> PathBuf {
    let found: Vec<PathBuf> = std::fs::read_dir(dir.join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .collect();
    assert_eq!(found.len(), 1, "one folder starting {prefix:?}: {found:?}");
    found[0].clone()
}

/// Overrides that make a model small enough for quick tests (the data pipeline stays real).
pub const SMALL_MODEL: &[&str] =
    &["n_layer=1", "n_embd=64", "n_head=2", "context_length=32", "eval_windows=16"];

/// Headless Chromium: `$LMHOST_CHROMIUM` (scripts/test.sh finds or installs it), else the first
/// of its usual names on the PATH.
pub fn chromium() -> PathBuf {
    if let Some(path) = std::env::var_os("LMHOST_CHROMIUM").filter(|p| !p.is_empty()) {
        return PathBuf::from(path);
    }
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find_map(on_path)
        .expect("headless Chromium is needed: run the tests with scripts/test.sh, which installs it")
}

/// The program `name` as found on the PATH, by its full path (chromedriver wants one).
pub fn on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}
