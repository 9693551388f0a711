//! `lmhost new`: in a scratch copy of the workspace (so this checkout stays as it is), create a
//! plugin, run its own tests, build it and train it for a few steps.

use std::path::Path;
use std::process::Command;

use lmhost_tests::{built, runs, SMALL_MODEL};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A workspace of plugin-api, the kit and an empty plugins/ folder, with this checkout's lock
/// file (the same dependency versions), its vendored candle and its target folder (no
/// dependency is built again).
fn scratch_workspace() -> tempfile::TempDir {
    let root = &built().workspace_root;
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&root.join("plugin-api"), &dir.path().join("plugin-api"));
    copy_dir(&root.join("docs"), &dir.path().join("docs"));
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::copy(root.join("Cargo.lock"), dir.path().join("Cargo.lock")).unwrap();
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let start = manifest.find("members = [").unwrap();
    let end = start + manifest[start..].find(']').unwrap() + 1;
    let manifest = format!(
        "{}members = [\"plugin-api\", \"plugin-api/kit\", \"plugins/*\"]{}",
        &manifest[..start],
        &manifest[end..]
    );
    // The vendored candle-core where it is: the same path is the same package, already built.
    let vendored = root.join("vendor/candle-core");
    let manifest = manifest.replace("path = \"vendor/candle-core\"", &format!("path = {:?}", vendored));
    std::fs::write(dir.path().join("Cargo.toml"), manifest).unwrap();
    dir
}

#[test]
fn a_new_plugin_builds_passes_its_tests_and_trains() {
    let ws = scratch_workspace();
    let w = ws.path();
    let target = built().release_dir.parent().unwrap().to_owned();

    let ran = built().lmhost(w, &["new", "my_idea"]);
    assert!(ran.success(), "{}", ran.stderr());
    assert!(ran.stdout().contains("target/release/lmhost run plugins/my_idea"), "{}", ran.stdout());
    let lib = std::fs::read_to_string(w.join("plugins/my_idea/src/lib.rs")).unwrap();
    assert!(lib.contains("pub struct MyIdea(Gpt);") && lib.contains("your idea here"));
    assert!(std::fs::read_to_string(w.join("plugins/my_idea/Cargo.toml"))
        .unwrap()
        .contains("name = \"my_idea\""));
    // Names are checked, and nothing is overwritten.
    assert!(built().lmhost(w, &["new", "my_idea"]).error_lines()[0].contains("already exists"));
    assert!(built().lmhost(w, &["new", "My-Idea"]).error_lines()[0].contains("snake_case"));

    // Its own tests pass (the command `lmhost new` prints).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let test = Command::new(&cargo)
        .args(["test", "--release", "-p", "my_idea", "--target-dir"])
        .arg(&target)
        .current_dir(w)
        .output()
        .unwrap();
    assert!(test.status.success(), "{}", String::from_utf8_lossy(&test.stderr));

    // `lmhost run plugins/my_idea` builds the workspace and trains it.
    let mut args =
        vec!["run", "plugins/my_idea", "--no-baseline", "steps=4", "eval_every=2", "variant=strong"];
    args.extend(SMALL_MODEL);
    let out = Command::new(built().lmhost_path())
        .args(&args)
        .current_dir(w)
        .env("LMHOST_CACHE", built().cache_dir())
        .env("CARGO_TARGET_DIR", &target)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = runs(w).pop().unwrap();
    assert_eq!(run.record["plugin"]["name"], "my_idea");
    assert_eq!(run.record["config"]["model"]["strength"], 2.0);
    let val = run.val_losses();
    assert!(val.last().unwrap() < &val[0], "{val:?}");
    assert!(w.join("plugins/my_idea.so").exists(), "installed beside its crate");
}
