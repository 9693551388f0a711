//! `lmhost new NAME`: a new plugin crate under `plugins/` of this checkout, the shortest honest
//! plugin (the baseline's attention with a marked place to change, a knob, a variant, tests),
//! joined to the workspace by its `plugins/*` member glob.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const CARGO_TOML: &str = include_str!("../templates/plugin_Cargo.toml");
const LIB_RS: &str = include_str!("../templates/plugin_lib.rs");

pub fn new_plugin(name: &str) -> Result<bool> {
    if name.is_empty()
        || !name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        || !name.starts_with(|c: char| c.is_ascii_lowercase())
    {
        bail!("`{name}` is not a plugin name: use snake_case letters, digits and _ (e.g. my_idea)");
    }
    let root = workspace_root()?;
    let dir = root.join("plugins").join(name);
    if dir.exists() {
        bail!("{} already exists; pick another name", dir.display());
    }
    let camel: String =
        name.split('_').filter(|w| !w.is_empty()).map(|w| w[..1].to_uppercase() + &w[1..]).collect();
    let fill = |t: &str| t.replace("{{name}}", name).replace("{{Name}}", &camel);
    std::fs::create_dir_all(dir.join("src")).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::write(dir.join("Cargo.toml"), fill(CARGO_TOML))?;
    std::fs::write(dir.join("src/lib.rs"), fill(LIB_RS))?;
    let shown =
        dir.strip_prefix(std::env::current_dir().unwrap_or_default()).unwrap_or(&dir).display().to_string();
    println!("created {shown}/ (Cargo.toml, src/lib.rs), a member of the workspace");
    println!("next:");
    println!("  edit {shown}/src/lib.rs                       # the marked place in the attention");
    println!("  cargo test --release -p {name}                # its own tests");
    println!(
        "  target/release/lmhost run {shown}            # builds the workspace, trains it and the baseline"
    );
    Ok(true)
}

/// The lmhost checkout around the current folder: a Cargo workspace with a `plugins/` folder.
fn workspace_root() -> Result<PathBuf> {
    let here = std::env::current_dir()?;
    for dir in here.ancestors() {
        let manifest = dir.join("Cargo.toml");
        if dir.join("plugins").is_dir() && manifest.is_file() && is_workspace(&manifest) {
            return Ok(dir.to_owned());
        }
    }
    bail!("`lmhost new` works inside an lmhost checkout (a Cargo workspace with a plugins/ folder); cd into one")
}

fn is_workspace(manifest: &Path) -> bool {
    std::fs::read_to_string(manifest).is_ok_and(|t| t.contains("[workspace]") && t.contains("plugins/*"))
}
