//! Finding plugins, and building them from a crate folder: always `cargo build --release
//! --workspace` (building one package alone re-resolves features and rebuilds candle), then each
//! plugin's library is linked as `plugins/<name>.so` so the plain `.so` path works afterwards.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::plugin::PluginSource;

/// The cargo features this lmhost was built with (`cuda`, `hub`).
pub fn built_features() -> Vec<&'static str> {
    [("cuda", cfg!(feature = "cuda")), ("hub", cfg!(feature = "hub"))]
        .into_iter()
        .filter(|(_, on)| *on)
        .map(|(name, _)| name)
        .collect()
}

/// `cargo build --release --workspace` with the features of this lmhost, so that a plugin built
/// from a crate folder can do what the host can (a CUDA host builds CUDA plugins).
pub fn build_command() -> Vec<String> {
    let mut args: Vec<String> = ["build", "--release", "--workspace"].map(String::from).to_vec();
    let features: Vec<String> = built_features().iter().map(|f| format!("lmhost/{f}")).collect();
    if !features.is_empty() {
        args.extend(["--features".to_owned(), features.join(",")]);
    }
    args
}

/// The file name a plugin library has on this platform.
pub fn library_file_name(crate_name: &str) -> String {
    let stem = crate_name.replace('-', "_");
    format!("{}{stem}{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX)
}

/// Turns what the user typed (`baseline`, a `.so` path, a crate folder, or a plugin name found
/// under `plugins/`) into a plugin source, building the workspace when given a crate folder.
pub fn resolve_plugin_arg(arg: &str) -> Result<PluginSource> {
    if arg == "baseline" {
        return Ok(PluginSource::Builtin);
    }
    let path = PathBuf::from(arg);
    if path.is_dir() && path.join("Cargo.toml").is_file() {
        return build_crate_folder(&path);
    }
    if path.extension().is_some_and(|e| e == std::env::consts::DLL_EXTENSION) || path.components().count() > 1
    {
        // Absolute: the loader searches the library path for a name without a slash (`vn.so`).
        return Ok(PluginSource::Library { path: std::path::absolute(&path)? });
    }
    // A bare name: an installed library first, then a crate folder of that name, under this
    // folder's plugins/ and then under the workspace this lmhost was built in.
    for plugins in plugin_folders() {
        let installed = plugins.join(format!("{arg}.{}", std::env::consts::DLL_EXTENSION));
        if installed.is_file() {
            return Ok(PluginSource::Library { path: installed });
        }
        let folder = plugins.join(arg);
        if folder.join("Cargo.toml").is_file() {
            return build_crate_folder(&folder);
        }
    }
    bail!("no plugin `{arg}`: not `baseline`, not a .so file, and neither plugins/{arg}.so nor plugins/{arg}/ exists here or in lmhost's workspace (`lmhost list` shows what there is)")
}

/// Where plugins are looked for by name: `plugins/` here, then the `plugins/` of the workspace
/// this lmhost was built in (`<workspace>/target/<profile>/lmhost`).
pub fn plugin_folders() -> Vec<PathBuf> {
    let mut folders = vec![PathBuf::from("plugins")];
    let own = std::env::current_exe().ok().and_then(|exe| {
        exe.ancestors()
            .find(|a| a.join("Cargo.toml").is_file() && a.join("plugins").is_dir())
            .map(|a| a.join("plugins"))
    });
    if let Some(own) = own {
        if std::fs::canonicalize(&own).ok() != std::fs::canonicalize("plugins").ok() {
            folders.push(own);
        }
    }
    folders
}

#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
    target_directory: PathBuf,
    workspace_root: PathBuf,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    manifest_path: PathBuf,
    targets: Vec<Target>,
}

#[derive(Deserialize)]
struct Target {
    name: String,
    crate_types: Vec<String>,
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

fn metadata(dir: &Path) -> Result<Metadata> {
    let out = Command::new(cargo())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(dir)
        .output()
        .with_context(|| format!("cannot run cargo to build {}: is Rust installed?", dir.display()))?;
    if !out.status.success() {
        bail!("cargo metadata failed in {}: {}", dir.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    serde_json::from_slice(&out.stdout).context("cannot read cargo metadata")
}

/// Builds the whole workspace holding `folder`, links every plugin library into `plugins/`,
/// and returns the library of the crate in `folder`.
pub fn build_crate_folder(folder: &Path) -> Result<PluginSource> {
    let meta = metadata(folder)?;
    let folder = folder.canonicalize().with_context(|| format!("cannot read {}", folder.display()))?;
    let package =
        meta.packages.iter().find(|p| p.manifest_path.parent() == Some(folder.as_path())).with_context(
            || {
                format!(
                    "{} is not a member of the workspace at {}",
                    folder.display(),
                    meta.workspace_root.display()
                )
            },
        )?;
    let target =
        package.targets.iter().find(|t| t.crate_types.iter().any(|c| c == "cdylib")).with_context(|| {
            format!("{} does not build a plugin: add `crate-type = [\"cdylib\"]` under [lib]", package.name)
        })?;
    let args = build_command();
    eprintln!("building the workspace (cargo {})…", args.join(" "));
    let status = Command::new(cargo())
        .args(&args)
        .current_dir(&meta.workspace_root)
        .status()
        .context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo {} failed (its errors are above); fix them and run again", args.join(" "));
    }
    install_plugins(&meta)?;
    Ok(PluginSource::Library {
        path: meta.target_directory.join("release").join(library_file_name(&target.name)),
    })
}

/// Links `plugins/<name>.so` to the release library of every plugin crate under `plugins/`.
fn install_plugins(meta: &Metadata) -> Result<()> {
    let plugins_dir = meta.workspace_root.join("plugins");
    for p in &meta.packages {
        let Some(dir) = p.manifest_path.parent() else {
            continue;
        };
        if dir.parent() != Some(plugins_dir.as_path()) {
            continue;
        }
        let Some(t) = p.targets.iter().find(|t| t.crate_types.iter().any(|c| c == "cdylib")) else {
            continue;
        };
        let built = meta.target_directory.join("release").join(library_file_name(&t.name));
        let link = plugins_dir.join(format!("{}.{}", t.name, std::env::consts::DLL_EXTENSION));
        if built.is_file() {
            let _ = std::fs::remove_file(&link);
            link_or_copy(&built, &link).with_context(|| format!("cannot install {}", link.display()))?;
        }
    }
    Ok(())
}

#[cfg(unix)]
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    std::os::unix::fs::symlink(from, to)
}

#[cfg(not(unix))]
fn link_or_copy(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::copy(from, to).map(|_| ())
}

/// Plugins a user can run from here: `plugins/*.so` and unbuilt crate folders.
pub fn discover(dir: &Path) -> Vec<(String, Option<PathBuf>)> {
    let mut found: Vec<(String, Option<PathBuf>)> = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return found;
    };
    let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in &entries {
        if path.extension().is_some_and(|e| e == std::env::consts::DLL_EXTENSION) {
            let name = path.file_stem().unwrap_or_default().to_string_lossy().into_owned();
            found.push((name, Some(path.clone())));
        }
    }
    for path in &entries {
        if path.join("Cargo.toml").is_file() {
            let name = path.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if !found.iter().any(|(n, _)| n == &name) {
                found.push((name, None));
            }
        }
    }
    found
}
