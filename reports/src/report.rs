//! Writing a comparison out: `report.html` (one self-contained page, inline SVG, no network),
//! `report.md` (the same tables for a paper draft or an issue), `report.json` (every number at
//! full precision) and each plot as `.svg` and `.png`. The output depends only on the runs and
//! the options, so the same inputs give the same files.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde_json::json;

use crate::compare::{Comparison, Metric, Summary, PANELS};
use crate::plot::{escape, Figure, Series, PALETTE};
use crate::runs::{ReportError, Run};

/// What a report wrote.
#[derive(Debug, Clone)]
pub struct ReportFiles {
    pub dir: PathBuf,
    pub html: PathBuf,
    pub markdown: PathBuf,
    pub json: PathBuf,
    pub plots: Vec<PathBuf>,
}

/// Writes the report into `dir` (created if needed).
pub fn write_report(c: &Comparison, dir: &Path) -> Result<ReportFiles, ReportError> {
    let summaries = c.summaries();
    let page = Page {
        title: title(c),
        lead: settings_line(c),
        notes: c.notes.clone(),
        sections: sections(c, &summaries),
        figures: figures(c),
        numbers: numbers(c, &summaries),
    };
    write_page(&page, dir)
}

/// One report page, whatever it reports (a comparison, a tune, a ladder): rendered the same
/// way as HTML and Markdown, with its numbers as JSON and its plots as SVG and PNG.
pub(crate) struct Page {
    pub title: String,
    /// The line under the title, saying how to read the page.
    pub lead: String,
    /// Things the reader must know, said once at the top.
    pub notes: Vec<String>,
    pub sections: Vec<Section>,
    /// The plots, with their file names.
    pub figures: Vec<(String, Figure)>,
    pub numbers: serde_json::Value,
}

/// Writes `page` into `dir` (created if needed): `report.html`, `report.md`, `report.json` and
/// each plot as `.svg` and `.png`.
pub(crate) fn write_page(page: &Page, dir: &Path) -> Result<ReportFiles, ReportError> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let mut plots = Vec::new();
    for (slug, figure) in &page.figures {
        let svg = figure.to_svg();
        let svg_path = dir.join(format!("{slug}.svg"));
        std::fs::write(&svg_path, &svg).map_err(|e| io(&svg_path, e))?;
        let png = crate::png::render(&svg, 2.0)
            .map_err(|e| ReportError::Usage(format!("cannot draw {slug}.png: {e}")))?;
        let png_path = dir.join(format!("{slug}.png"));
        std::fs::write(&png_path, png).map_err(|e| io(&png_path, e))?;
        plots.extend([svg_path, png_path]);
    }
    let files = ReportFiles {
        html: dir.join("report.html"),
        markdown: dir.join("report.md"),
        json: dir.join("report.json"),
        dir: dir.to_owned(),
        plots,
    };
    std::fs::write(&files.html, html(page)).map_err(|e| io(&files.html, e))?;
    std::fs::write(&files.markdown, markdown(page)).map_err(|e| io(&files.markdown, e))?;
    let numbers = serde_json::to_string_pretty(&page.numbers).expect("report numbers serialise");
    std::fs::write(&files.json, numbers).map_err(|e| io(&files.json, e))?;
    Ok(files)
}

fn io(path: &Path, e: std::io::Error) -> ReportError {
    ReportError::Io { path: path.display().to_string(), source: e }
}

/// `value_norm/normv1_0 vs baseline`.
pub fn title(c: &Comparison) -> String {
    let others: Vec<&str> = c
        .groups
        .iter()
        .enumerate()
        .filter(|(i, _)| !c.is_reference(*i))
        .map(|(_, g)| g.label.as_str())
        .collect();
    match (c.baseline, others.is_empty()) {
        (Some(b), false) => format!("{} vs {}", others.join(", "), c.groups[b].label),
        (Some(b), true) => c.groups[b].label.clone(),
        (None, _) => others.join(", "),
    }
}

/// Every plot of the report, with its file name: a panel per column of [`PANELS`] (with its
/// difference to the baseline where the panel says), the interpolation paths, then one per
/// extra metric.
pub fn figures(c: &Comparison) -> Vec<(String, Figure)> {
    let figure = |title: String, y: String, zero_line: bool, series: Vec<Series>| Figure {
        title,
        x_label: c.options.x.label().to_owned(),
        y_label: y,
        log_x: c.options.x.log(),
        log_y: false,
        zero_line,
        x_range: c.options.x_range,
        series,
    };
    let smoothing = |m: &Metric| match m.smoothed() && c.options.smoothing > 0.0 {
        true => format!(" (EMA {})", c.options.smoothing),
        false => String::new(),
    };
    let mut metrics: Vec<Metric> = PANELS.iter().map(Metric::Column).collect();
    let own = metrics.len();
    metrics.extend(c.extra_metrics().into_iter().map(Metric::Extra));
    let mut out = Vec::new();
    for (i, m) in metrics.iter().enumerate() {
        if i == own && !c.interpolations.is_empty() {
            out.push(("interpolation".into(), interpolation_figure(c)));
        }
        out.push((m.slug(), figure(format!("{}{}", m.title(), smoothing(m)), m.unit(), false, curves(c, m))));
        if m.compared() && c.has_differences() {
            let title = format!("{} − baseline{}", m.title(), smoothing(m));
            out.push((
                format!("{}_vs_baseline", m.slug()),
                figure(title, format!("Δ {}", m.unit()), true, differences(c, m)),
            ));
        }
    }
    if own == metrics.len() && !c.interpolations.is_empty() {
        out.push(("interpolation".into(), interpolation_figure(c)));
    }
    out.retain(|(_, f)| !f.is_empty());
    out
}

fn curves(c: &Comparison, metric: &Metric) -> Vec<Series> {
    c.groups
        .iter()
        .enumerate()
        .map(|(i, g)| {
            let curve = c.curve(i, metric);
            Series {
                label: format!("{} (n={})", g.label, g.runs.len()),
                color: PALETTE[i % PALETTE.len()].into(),
                line: curve.mean.iter().map(|p| (p.0, p.1)).collect(),
                band: if g.runs.len() > 1 {
                    curve.mean.iter().map(|p| (p.0, p.2, p.3)).collect()
                } else {
                    Vec::new()
                },
                raw: curve.raw,
                scatter: false,
            }
        })
        .collect()
}

fn differences(c: &Comparison, metric: &Metric) -> Vec<Series> {
    (0..c.groups.len())
        .filter(|&i| c.reference[i].is_some())
        .map(|i| Series {
            label: c.groups[i].label.clone(),
            color: PALETTE[i % PALETTE.len()].into(),
            line: c.difference(i, metric),
            ..Series::default()
        })
        .collect()
}

pub(crate) fn fmt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "–".into(),
    }
}

/// The summary table of `c` as every report shows it: (header, rows).
pub fn summary_rows(c: &Comparison) -> (Vec<&'static str>, Vec<Vec<String>>) {
    summary_table(&c.summaries())
}

/// (header, rows) of the summary table.
pub(crate) fn summary_table(summaries: &[Summary]) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let test = summaries.first().is_some_and(|s| s.split == "test");
    let header = vec![
        "group",
        "n",
        "seeds",
        if test { "final test loss" } else { "final val loss" },
        if test { "test accuracy" } else { "val accuracy" },
        "Δ vs baseline",
        "95% CI",
        "p",
        "verdict",
    ];
    let rows = summaries
        .iter()
        .map(|s| {
            vec![
                s.label.clone(),
                s.n.to_string(),
                s.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
                format!("{:.4} ± {:.4}", s.loss_mean, s.loss_std),
                fmt(Some(s.accuracy_mean), 4),
                s.difference.map(|d| format!("{d:+.4}")).unwrap_or_else(|| "–".into()),
                s.ci95.map(|(a, b)| format!("[{a:+.4}, {b:+.4}]")).unwrap_or_else(|| "–".into()),
                fmt(s.p_value, 3),
                s.verdict.clone(),
            ]
        })
        .collect();
    (header, rows)
}

/// Loss along every interpolation path, one line per table and split; a pair of children of one
/// parent is named by the step they branched at first (what an LMC study varies).
fn interpolation_figure(c: &Comparison) -> Figure {
    let mut series = Vec::new();
    for t in &c.interpolations {
        let branched = t.branched_at.map(|k| format!("branched at step {k}: ")).unwrap_or_default();
        for split in t.splits() {
            series.push(Series {
                label: format!("{branched}{} ({split})", t.label()),
                color: PALETTE[series.len() % PALETTE.len()].into(),
                line: t.losses(&split),
                ..Default::default()
            });
        }
    }
    Figure {
        title: "linear mode connectivity: loss along (1 − α)·A + α·B".into(),
        x_label: "α".into(),
        y_label: "nats/token".into(),
        series,
        ..Default::default()
    }
}

/// (header, rows) of the barrier table: one row per interpolation and split.
fn interpolation_table(c: &Comparison) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "A ↔ B",
        "branched at step",
        "split",
        "loss at A",
        "loss at B",
        "highest loss (at α)",
        "barrier",
        "above the line",
    ];
    let rows = c
        .interpolations
        .iter()
        .flat_map(|t| t.splits().into_iter().map(move |s| (t, s)))
        .filter_map(|(t, split)| {
            let b = t.barrier(&split)?;
            Some(vec![
                t.label(),
                t.branched_at.map_or("–".into(), |s| s.to_string()),
                split,
                format!("{:.4}", b.loss_a),
                format!("{:.4}", b.loss_b),
                format!("{:.4} ({:.2})", b.peak, b.peak_alpha),
                format!("{:.4}", b.barrier),
                format!("{:.4}", b.above_line),
            ])
        })
        .collect();
    (header, rows)
}

const INTERPOLATION_NOTE: &str = "Barrier: the highest loss on the linear path between the two runs' weights minus the mean of the two ends' losses (Frankle et al. 2020, §2); near 0 means the runs are linearly connected. Above the line: the largest rise over the straight line between the ends' losses (0 when the highest loss is an end).";

/// (header, rows) of the runs table: one row per run, labelled with its group.
pub(crate) fn runs_table<'a>(
    runs: impl IntoIterator<Item = (String, &'a Run)>,
) -> (Vec<&'static str>, Vec<Vec<String>>) {
    let header = vec![
        "run",
        "group",
        "seed",
        "status",
        "precision",
        "params (train/prod)",
        "FLOPs/token",
        "tokens",
        "tokens/s",
        "wall",
        "final val loss",
        "test loss",
    ];
    let count = |v: Option<u64>| v.map(|v| v.to_string()).unwrap_or_else(|| "–".into());
    let rows = runs
        .into_iter()
        .map(|(group, r)| {
            vec![
                r.id.clone(),
                group,
                r.seed.to_string(),
                r.status.clone(),
                r.precision(),
                format!("{} / {}", count(r.params_train), count(r.params_prod)),
                r.flops_per_token.map_or_else(|| "–".into(), |f| format!("{f:.3e}")),
                r.tokens().to_string(),
                fmt(r.tokens_per_s, 0),
                r.wall_s.map(|w| format!("{w:.0} s")).unwrap_or_else(|| "–".into()),
                fmt(r.final_val().map(|v| v.0), 4),
                fmt(r.final_on(crate::stats::Split::Test).map(|v| v.0), 4),
            ]
        })
        .collect();
    (header, rows)
}

fn diff_table(c: &Comparison) -> (Vec<String>, Vec<Vec<String>>) {
    let mut header = vec!["key".to_owned()];
    header.extend(c.groups.iter().map(|g| g.label.clone()));
    let rows = c.config_diff().into_iter().map(|(k, vs)| std::iter::once(k).chain(vs).collect()).collect();
    (header, rows)
}

fn md_table<H: AsRef<str>>(header: &[H], rows: &[Vec<String>]) -> String {
    let cell = |s: &str| s.replace('|', "\\|");
    let mut out = format!(
        "| {} |\n|{}\n",
        header.iter().map(|h| cell(h.as_ref())).collect::<Vec<_>>().join(" | "),
        " --- |".repeat(header.len())
    );
    for r in rows {
        let _ = writeln!(out, "| {} |", r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | "));
    }
    out
}

fn html_table<H: AsRef<str>>(header: &[H], rows: &[Vec<String>]) -> String {
    let mut out = String::from("<table><thead><tr>");
    for h in header {
        let _ = write!(out, "<th>{}</th>", escape(h.as_ref()));
    }
    out.push_str("</tr></thead><tbody>");
    for r in rows {
        out.push_str("<tr>");
        for c in r {
            let _ = write!(out, "<td>{}</td>", escape(c));
        }
        out.push_str("</tr>");
    }
    out.push_str("</tbody></table>");
    out
}

fn settings_line(c: &Comparison) -> String {
    format!(
        "x axis: {}; band: {}; training curves smoothed with a de-biased EMA of strength {} (raw points faint behind); difference plots: group mean − baseline mean on the group's x values.",
        c.options.x.label(),
        match c.options.band {
            crate::compare::Band::Std => "mean ± 1 std across seeds",
            crate::compare::Band::MinMax => "min–max across seeds",
        },
        c.options.smoothing
    )
}

/// One section of a report page, rendered the same way in HTML and Markdown.
pub(crate) struct Section {
    pub heading: String,
    /// A line under the heading, saying how to read it.
    pub note: Option<String>,
    pub body: Body,
}

pub(crate) enum Body {
    Table(Vec<String>, Vec<Vec<String>>),
    Text(String),
    /// The plots (inline SVG in HTML, links to the SVG files in Markdown).
    Figures,
}

impl Section {
    pub(crate) fn new(heading: &str, note: Option<&str>, body: Body) -> Self {
        Self { heading: heading.to_owned(), note: note.map(str::to_owned), body }
    }
}

/// A table body from a (header, rows) pair.
pub(crate) fn table<H: AsRef<str>>((header, rows): (Vec<H>, Vec<Vec<String>>)) -> Body {
    Body::Table(header.iter().map(|h| h.as_ref().to_owned()).collect(), rows)
}

/// The report's sections, in order: the one list both renderings follow.
fn sections(c: &Comparison, summaries: &[Summary]) -> Vec<Section> {
    let section = Section::new;
    let (dh, dr) = diff_table(c);
    let mut out = vec![
        section(
            if c.options.split == crate::stats::Split::Test {
                "Final test loss"
            } else {
                "Final validation loss"
            },
            None,
            table(summary_table(summaries)),
        ),
        section("Curves", None, Body::Figures),
        section(
            "Config differences",
            None,
            if dr.is_empty() {
                Body::Text("The groups differ only by plugin (and seeds).".into())
            } else {
                Body::Table(dh, dr)
            },
        ),
    ];
    if !c.interpolations.is_empty() {
        out.push(section(
            "Linear mode connectivity",
            Some(INTERPOLATION_NOTE),
            table(interpolation_table(c)),
        ));
    }
    let runs = c.groups.iter().flat_map(|g| g.runs.iter().map(move |r| (g.label.clone(), r)));
    out.push(section("Runs", None, table(runs_table(runs))));
    out
}

fn html(page: &Page) -> String {
    let mut body = format!("<h1>{}</h1><p class=\"muted\">{}</p>", escape(&page.title), escape(&page.lead));
    if !page.notes.is_empty() {
        body.push_str("<div class=\"notes\"><b>Read this first</b><ul>");
        for n in &page.notes {
            let _ = write!(body, "<li>{}</li>", escape(n));
        }
        body.push_str("</ul></div>");
    }
    for s in &page.sections {
        let _ = write!(body, "<h2>{}</h2>", escape(&s.heading));
        if let Some(note) = &s.note {
            let _ = write!(body, "<p class=\"muted\">{}</p>", escape(note));
        }
        match &s.body {
            Body::Table(header, rows) => body.push_str(&html_table(header, rows)),
            Body::Text(text) => {
                let _ = write!(body, "<p>{}</p>", escape(text));
            }
            Body::Figures => {
                body.push_str("<div class=\"plots\">");
                for (slug, f) in &page.figures {
                    let _ = write!(body, "<figure id=\"{slug}\">{}</figure>", f.to_svg());
                }
                body.push_str("</div>");
            }
        }
    }
    format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>{body}</body></html>\n",
        escape(&page.title)
    )
}

const STYLE: &str = "body{font-family:-apple-system,'DejaVu Sans',Helvetica,Arial,sans-serif;margin:24px auto;max-width:1600px;color:#222;padding:0 16px}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px;border-bottom:1px solid #ddd}.muted{color:#666;font-size:13px}\
table{border-collapse:collapse;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:left}th{background:#f4f4f4}\
.notes{background:#fff7e0;border:1px solid #e8c860;padding:8px 12px;font-size:13px}\
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(600px,1fr));gap:8px}figure{margin:0}svg.plot{width:100%;height:auto}";

fn markdown(page: &Page) -> String {
    let mut md = format!("# {}\n\n{}\n\n", page.title, page.lead);
    for n in &page.notes {
        let _ = writeln!(md, "> **Note:** {n}\n");
    }
    for s in &page.sections {
        let _ = write!(md, "## {}\n\n", s.heading);
        if let Some(note) = &s.note {
            let _ = write!(md, "{note}\n\n");
        }
        match &s.body {
            Body::Table(header, rows) => {
                let _ = writeln!(md, "{}", md_table(header, rows));
            }
            Body::Text(text) => {
                let _ = write!(md, "{text}\n\n");
            }
            Body::Figures => {
                for (slug, f) in &page.figures {
                    let _ = writeln!(md, "![{}]({slug}.svg)", f.title);
                }
                md.push('\n');
            }
        }
    }
    md
}

fn numbers(c: &Comparison, summaries: &[Summary]) -> serde_json::Value {
    json!({
        "title": title(c),
        "x_axis": c.options.x,
        "split": c.options.split.as_str(),
        "band": c.options.band,
        "smoothing": c.options.smoothing,
        "notes": c.notes,
        "summaries": summaries,
        "config_diff": c.config_diff(),
        "interpolations": c.interpolations.iter().map(|t| json!({
            "a": t.a,
            "b": t.b,
            "branched_at": t.branched_at,
            "barriers": t.splits().into_iter().map(|s| (s.clone(), t.barrier(&s))).collect::<std::collections::BTreeMap<_, _>>(),
        })).collect::<Vec<_>>(),
        "runs": c.groups.iter().flat_map(|g| g.runs.iter().map(move |r| run_numbers(&g.label, r))).collect::<Vec<_>>(),
    })
}

/// A run's numbers in a report's JSON.
pub(crate) fn run_numbers(group: &str, r: &Run) -> serde_json::Value {
    json!({
        "id": r.id,
        "dir": r.dir,
        "group": group,
        "seed": r.seed,
        "status": r.status,
        "final_val_loss": r.final_val().map(|v| v.0),
        "final_val_accuracy": r.final_val().map(|v| v.1),
        "test_loss": r.final_on(crate::stats::Split::Test).map(|v| v.0),
        "test_accuracy": r.final_on(crate::stats::Split::Test).map(|v| v.1),
        "flops_per_token": r.flops_per_token,
        "tokens": r.tokens(),
    })
}
