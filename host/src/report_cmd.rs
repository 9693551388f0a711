//! `lmhost compare` and the report at the end of `lmhost run`: pick the run folders, pick where
//! the report goes without overwriting one the user did not name, and print the summary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use reports::{Band, CompareOptions, Split, XAxis};

#[derive(clap::Args)]
pub struct CompareArgs {
    /// Run folders or glob patterns (e.g. 'runs/*value_norm*'); folders `lmhost interpolate`
    /// wrote add their loss-barrier tables and plot; one study folder (`lmhost tune` or `lmhost
    /// ladder` made it) writes the study's report.
    #[arg(required = true)]
    runs: Vec<String>,
    /// A run of the group to compare against [default: the baseline runs among them].
    #[arg(long)]
    baseline: Option<PathBuf>,
    /// What the x axis counts.
    #[arg(long, value_enum, default_value = "tokens")]
    x: XAxis,
    /// Whose final loss the summary tests: val, or test (runs trained with test_fraction).
    #[arg(long, value_enum, default_value = "val")]
    split: Split,
    /// The band around a mean across seeds.
    #[arg(long, value_enum, default_value = "std")]
    band: Band,
    /// Strength of the de-biased EMA on training curves, from 0 (none) to 0.99.
    #[arg(long, default_value_t = 0.8)]
    smooth: f64,
    /// Where to write the report [default: reports/<name>, never an existing folder].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Replace the report already in --out.
    #[arg(long)]
    overwrite: bool,
    /// Compare runs measured with different tokenizers or validation sets anyway.
    #[arg(long)]
    force: bool,
}

pub fn compare_command(args: &CompareArgs) -> Result<bool> {
    if !(0.0..1.0).contains(&args.smooth) {
        bail!("--smooth {} must be in [0, 1): 0 turns smoothing off, 0.99 smooths most", args.smooth);
    }
    let dirs = expand(&args.runs)?;
    if let [study] = &dirs[..] {
        if reports::is_study(study) {
            let name = study.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let out = out_dir(args, || fresh_dir(Path::new("reports"), &name))?;
            let files = reports::write_study_report(study, &out, &crate::config::observing_keys())?;
            println!("report: {}", files.html.display());
            return Ok(true);
        }
    }
    if let Some(study) = dirs.iter().find(|d| reports::is_study(d)) {
        bail!("{} is a study folder: compare it alone (lmhost compare {})", study.display(), study.display());
    }
    let options = CompareOptions {
        baseline: args.baseline.clone(),
        x: args.x,
        band: args.band,
        smoothing: args.smooth,
        force: args.force,
        split: args.split,
        observing: crate::config::observing_keys(),
        x_range: None,
    };
    let (tables, dirs): (Vec<PathBuf>, Vec<PathBuf>) =
        dirs.into_iter().partition(|d| reports::is_interpolation(d));
    if dirs.is_empty() {
        bail!(
            "only interpolation tables given: pass the runs they join too (e.g. the parent and its children)"
        );
    }
    let runs = dirs.iter().map(|d| reports::Run::load(d)).collect::<Result<Vec<_>, _>>()?;
    let mut comparison = reports::Comparison::new(runs, options)?;
    comparison.interpolations =
        tables.iter().map(|t| reports::Interpolation::read(t)).collect::<Result<Vec<_>, _>>()?;
    let out = out_dir(args, || fresh_dir(Path::new("reports"), &slug(&reports::report::title(&comparison))))?;
    let files = reports::report::write_report(&comparison, &out)?;
    print_summary(&comparison);
    println!("report: {}", files.html.display());
    Ok(true)
}

/// Where the report goes: `--out` (refused when it holds a report, unless `--overwrite`), else
/// `default`.
fn out_dir(args: &CompareArgs, default: impl FnOnce() -> PathBuf) -> Result<PathBuf> {
    match &args.out {
        Some(out) if out.join("report.html").exists() && !args.overwrite => {
            bail!(
                "{} already holds a report; pass --overwrite to replace it, or another --out",
                out.display()
            )
        }
        Some(out) => Ok(out.clone()),
        None => Ok(default()),
    }
}

/// The comparison of the runs in `dirs` that logged anything, as a run's end shows it.
fn after_run(dirs: &[PathBuf]) -> Result<reports::Comparison> {
    let runs: Vec<reports::Run> = dirs.iter().filter_map(|d| reports::Run::load(d).ok()).collect();
    if runs.is_empty() {
        bail!("no arm logged any stats");
    }
    let options = CompareOptions { observing: crate::config::observing_keys(), ..CompareOptions::default() };
    Ok(reports::Comparison::new(runs, options)?)
}

/// Writes the comparison at the end of `lmhost run`, into `reports/<name>` (a fresh name).
pub fn report_after_run(dirs: &[PathBuf], name: &str, reports: &Path) -> Result<PathBuf> {
    let files = reports::report::write_report(&after_run(dirs)?, &fresh_dir(reports, name))?;
    Ok(files.html)
}

/// Prints the comparison table of `dirs` (a sweep's end: its groups across their seeds).
pub fn print_comparison(dirs: &[PathBuf]) {
    match after_run(dirs) {
        Ok(c) => print_summary(&c),
        Err(e) => eprintln!("note: no comparison: {e:#}"),
    }
}

pub fn print_summary(c: &reports::Comparison) {
    for note in &c.notes {
        eprintln!("note: {note}");
    }
    let loss = if c.options.split == Split::Test { "final test loss" } else { "final val loss" };
    println!("{:<28} {:>3} {:>18} {:>10} {:>20} {:>7}  verdict", "group", "n", loss, "Δ", "95% CI", "p");
    for s in c.summaries() {
        println!(
            "{:<28} {:>3} {:>18} {:>10} {:>20} {:>7}  {}",
            s.label,
            s.n,
            format!("{:.4} ± {:.4}", s.loss_mean, s.loss_std),
            s.difference.map(|d| format!("{d:+.4}")).unwrap_or_default(),
            s.ci95.map(|(a, b)| format!("[{a:+.3}, {b:+.3}]")).unwrap_or_default(),
            s.p_value.map(|p| format!("{p:.3}")).unwrap_or_default(),
            s.verdict
        );
    }
}

/// Run folders from paths and glob patterns, in the order given.
fn expand(patterns: &[String]) -> Result<Vec<PathBuf>> {
    let mut dirs = Vec::new();
    for p in patterns {
        if p.contains(['*', '?', '[']) {
            let matched: Vec<PathBuf> = glob::glob(p)
                .with_context(|| format!("`{p}` is not a valid pattern"))?
                .filter_map(|m| m.ok())
                .filter(|m| m.is_dir())
                .collect();
            if matched.is_empty() {
                bail!("no run folders match `{p}`");
            }
            dirs.extend(matched);
        } else {
            dirs.push(PathBuf::from(p));
        }
    }
    dirs.dedup();
    Ok(dirs)
}

/// `value_norm/normv1_0 vs baseline` → `value_norm-normv1_0-vs-baseline`.
pub fn slug(title: &str) -> String {
    let s: String =
        title.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '-' }).collect();
    let parts: Vec<&str> = s.split('-').filter(|p| !p.is_empty()).collect();
    let joined = parts.join("-");
    if joined.is_empty() {
        "report".into()
    } else {
        joined.chars().take(80).collect()
    }
}

/// `root/name`, or `root/name-2`, `-3`, … so no existing report is touched.
pub fn fresh_dir(root: &Path, name: &str) -> PathBuf {
    (1..)
        .map(|n| if n == 1 { root.join(name) } else { root.join(format!("{name}-{n}")) })
        .find(|p| !p.exists())
        .expect("an unused name")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_names_are_tidy_and_never_reused() {
        assert_eq!(slug("value_norm/normv1_0 vs baseline"), "value_norm-normv1_0-vs-baseline");
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        assert_eq!(fresh_dir(dir.path(), "a"), dir.path().join("a-2"));
        assert_eq!(fresh_dir(dir.path(), "b"), dir.path().join("b"));
    }
}
