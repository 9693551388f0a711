//! The analysis behind a report: runs grouped into replicates (the same plugin, variant and
//! config but the seed), the baseline found, curves averaged across seeds, and the final
//! validation loss of each group tested against the baseline's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use crate::runs::{ReportError, Run};
use crate::statistics::{self, ema_debiased, interpolate, TTest};
use crate::stats::{Split, StatsRow};

/// What the x axis counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum XAxis {
    Tokens,
    Step,
    Time,
    /// training FLOPs, as each model counted its matrix products
    Flops,
}

impl XAxis {
    pub fn label(self) -> &'static str {
        match self {
            XAxis::Tokens => "tokens seen",
            XAxis::Step => "step",
            XAxis::Time => "wall time (s)",
            XAxis::Flops => "training FLOPs",
        }
    }

    /// The row's x (none: a FLOPs axis for a run that did not count them).
    fn of(self, row: &StatsRow) -> Option<f64> {
        match self {
            XAxis::Tokens => Some(row.tokens as f64),
            XAxis::Step => Some(row.step as f64),
            XAxis::Time => Some(row.wall_s),
            XAxis::Flops => row.flops,
        }
    }

    /// Tokens and steps span decades: drawn on a log axis.
    pub fn log(self) -> bool {
        self != XAxis::Time
    }
}

/// The band drawn around a mean across seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Band {
    /// mean ± one standard deviation across seeds
    Std,
    /// the lowest and highest seed
    MinMax,
}

#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// A run of the baseline group; by default the one group of `baseline` runs.
    pub baseline: Option<PathBuf>,
    pub x: XAxis,
    pub band: Band,
    /// EMA strength β in [0, 1) for training curves (0: no smoothing).
    pub smoothing: f64,
    /// Compare runs with different tokenizers or validation sets anyway.
    pub force: bool,
    /// Whose final loss the summary tests: the validation split's (the default), or the test
    /// split's (runs trained with `test_fraction`: select on val, report on test).
    pub split: Split,
    /// Config keys that only observe (logging and evaluation cadences, checkpoint policies):
    /// runs that differ in them alone are replicates.
    pub observing: Vec<String>,
    /// The x range the plots draw (the dashboard's zoom); `None`: everything.
    pub x_range: Option<(f64, f64)>,
}

impl Default for CompareOptions {
    fn default() -> Self {
        Self {
            baseline: None,
            x: XAxis::Tokens,
            band: Band::Std,
            smoothing: 0.8,
            force: false,
            split: Split::Val,
            observing: Vec::new(),
            x_range: None,
        }
    }
}

/// (x, y) points of one curve.
pub type Points = Vec<(f64, f64)>;

/// One run's points of a metric by step: (step, x, value as drawn), and the raw (x, value).
struct RunSeries {
    shown: Vec<(u64, f64, f64)>,
    raw: Points,
}

/// One panel of the report drawn from a column of the stats (extra metrics get one each as
/// well): the one table a new plotted column is added to.
#[derive(Debug, PartialEq, Eq)]
pub struct Panel {
    /// File name of the plot, and the figure's id in the HTML.
    pub slug: &'static str,
    /// What it shows, e.g. `validation loss`; the plot's title.
    pub name: &'static str,
    /// The y axis' label.
    pub unit: &'static str,
    /// The rows it reads, and the column (a [`StatsRow`] field).
    pub split: Split,
    pub column: &'static str,
    /// Per-step training series are noisy and get the EMA; evaluations are not smoothed.
    pub smoothed: bool,
    /// Followed by a panel of its difference to the baseline.
    pub compared: bool,
}

/// The report's panels of the stats' own columns, in the report's order.
pub const PANELS: &[Panel] = &[
    Panel {
        slug: "val_loss",
        name: "validation loss",
        unit: "nats/token",
        split: Split::Val,
        column: "loss",
        smoothed: false,
        compared: true,
    },
    Panel {
        slug: "train_loss",
        name: "training loss",
        unit: "nats/token",
        split: Split::Train,
        column: "loss",
        smoothed: true,
        compared: true,
    },
    Panel {
        slug: "val_accuracy",
        name: "validation accuracy",
        unit: "fraction",
        split: Split::Val,
        column: "accuracy",
        smoothed: false,
        compared: false,
    },
    Panel {
        slug: "lr",
        name: "learning rate",
        unit: "lr",
        split: Split::Train,
        column: "lr",
        smoothed: false,
        compared: false,
    },
    Panel {
        slug: "grad_norm",
        name: "gradient norm (before clipping)",
        unit: "L2 norm",
        split: Split::Train,
        column: "grad_norm",
        smoothed: true,
        compared: false,
    },
];

/// What a curve shows: a panel's column, or a plugin's extra metric by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Metric {
    Column(&'static Panel),
    Extra(String),
}

impl Metric {
    /// The validation loss, the metric every summary tests.
    pub const VAL_LOSS: Metric = Metric::Column(&PANELS[0]);
    pub const TRAIN_LOSS: Metric = Metric::Column(&PANELS[1]);

    pub fn title(&self) -> String {
        match self {
            Metric::Column(p) => p.name.into(),
            Metric::Extra(name) => name.clone(),
        }
    }

    pub fn unit(&self) -> String {
        match self {
            Metric::Column(p) => p.unit.into(),
            Metric::Extra(name) => name.clone(),
        }
    }

    pub fn slug(&self) -> String {
        match self {
            Metric::Column(p) => p.slug.into(),
            Metric::Extra(name) => format!(
                "metric_{}",
                name.chars().map(|ch| if ch.is_ascii_alphanumeric() { ch } else { '_' }).collect::<String>()
            ),
        }
    }

    /// Per-step series get the EMA (a plugin's metrics too); evaluations are not smoothed.
    pub fn smoothed(&self) -> bool {
        match self {
            Metric::Column(p) => p.smoothed,
            Metric::Extra(_) => true,
        }
    }

    /// Whether the report adds a panel of its difference to the baseline.
    pub fn compared(&self) -> bool {
        matches!(self, Metric::Column(p) if p.compared)
    }

    fn value(&self, row: &StatsRow) -> Option<f64> {
        match (self, row.metric.as_deref()) {
            (Metric::Column(p), None) if row.split == p.split => row.number(p.column),
            (Metric::Extra(name), Some(m)) if m == name => row.value,
            _ => None,
        }
    }
}

/// Replicates: runs that differ only by seed.
#[derive(Debug, Clone)]
pub struct Group {
    pub label: String,
    pub runs: Vec<Run>,
    /// The group's config without the seed.
    pub config: BTreeMap<String, Value>,
}

impl Group {
    pub fn seeds(&self) -> Vec<u64> {
        self.runs.iter().map(|r| r.seed).collect()
    }

    /// Each run's last loss on `split` (runs that never evaluated it are left out).
    pub fn final_losses(&self, split: Split) -> Vec<f64> {
        self.runs.iter().filter_map(|r| r.final_on(split).map(|v| v.0)).collect()
    }
}

/// A curve averaged over a group's runs, with its band and each run's raw points.
#[derive(Debug, Clone, Default)]
pub struct GroupCurve {
    /// (x, mean, band low, band high).
    pub mean: Vec<(f64, f64, f64, f64)>,
    /// Each run's unsmoothed points.
    pub raw: Vec<Points>,
}

/// A group's final validation (or test) loss against the baseline's.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub label: String,
    /// The split the loss and accuracy are of: `val`, or `test` under `--split test`.
    pub split: &'static str,
    pub n: usize,
    pub seeds: Vec<u64>,
    pub loss_mean: f64,
    pub loss_std: f64,
    pub accuracy_mean: f64,
    pub is_baseline: bool,
    /// `paired` (seeds match) or `welch`.
    pub test: Option<&'static str>,
    pub difference: Option<f64>,
    pub ci95: Option<(f64, f64)>,
    pub p_value: Option<f64>,
    /// Why there is no test, in words.
    pub verdict: String,
}

pub struct Comparison {
    pub groups: Vec<Group>,
    /// The one group everything is compared against, when there is one.
    pub baseline: Option<usize>,
    /// Each group's reference: the baseline, or, when several baseline configurations are
    /// compared at once (a sweep over lr, say), the one whose settings match the group's.
    /// `None` for a reference group itself.
    pub reference: Vec<Option<usize>>,
    pub options: CompareOptions,
    /// Things the reader must know, said once at the top of the report.
    pub notes: Vec<String>,
    /// Linear-mode-connectivity tables shown beside the runs (`lmhost interpolate`).
    pub interpolations: Vec<crate::Interpolation>,
}

impl Comparison {
    pub fn new(runs: Vec<Run>, options: CompareOptions) -> Result<Self, ReportError> {
        if runs.is_empty() {
            return Err(ReportError::Usage("no runs to compare".into()));
        }
        if options.split == Split::Test {
            if let Some(r) = runs.iter().find(|r| r.final_on(Split::Test).is_none()) {
                return Err(ReportError::Usage(format!(
                    "{} has no test split: train with test_fraction > 0 (tune and ladder do), or compare on val",
                    r.id
                )));
            }
        }
        if options.x == XAxis::Flops {
            if let Some(r) = runs.iter().find(|r| r.flops_per_token.is_none()) {
                return Err(ReportError::Usage(format!(
                    "{} has no FLOPs count (its plugin was built before plugin-api 0.1.3): compare with --x tokens, or rerun it",
                    r.id
                )));
            }
        }
        let mut notes: Vec<String> =
            runs.iter().flat_map(|r| r.notes.iter().map(move |n| format!("{}: {n}", r.id))).collect();
        type Differs = fn(&Run, &Run) -> bool;
        let differ: [(&str, Differs); 2] =
            [("tokenizers", |a, b| !a.same_tokenizer(b)), ("validation sets", |a, b| a.val_set != b.val_set)];
        for (what, differs) in differ {
            if let Some(other) = runs.iter().find(|r| differs(&runs[0], r)) {
                let message = format!(
                    "{} and {} were measured with different {what}, so their losses are not comparable",
                    runs[0].id, other.id
                );
                if !options.force {
                    return Err(ReportError::Incomparable(format!(
                        "{message}; pass --force to compare them anyway"
                    )));
                }
                notes.push(format!("{message} (compared anyway: --force)"));
            }
        }
        let groups = group_replicates(runs, &options.observing);
        let baseline = find_baseline(&groups, &options, &mut notes)?;
        let reference = match baseline {
            Some(b) => (0..groups.len()).map(|i| (i != b).then_some(b)).collect(),
            None => match_baselines(&groups, &mut notes),
        };
        Ok(Self { groups, baseline, reference, options, notes, interpolations: Vec::new() })
    }

    /// Every extra metric any run logged, by name.
    pub fn extra_metrics(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .groups
            .iter()
            .flat_map(|g| &g.runs)
            .flat_map(|r| r.stats.rows.iter().filter_map(|row| row.metric.clone()))
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// One run's points of a metric, smoothed first when the metric is a training series.
    fn run_series(&self, run: &Run, metric: &Metric) -> RunSeries {
        let rows: Vec<(u64, f64, f64)> = run
            .stats
            .rows
            .iter()
            .filter_map(|row| Some((row.step, self.options.x.of(row)?, metric.value(row)?)))
            .filter(|(_, x, y)| y.is_finite() && x.is_finite())
            .collect();
        let raw = rows.iter().map(|r| (r.1, r.2)).collect();
        let shown = if metric.smoothed() && self.options.smoothing > 0.0 {
            let ys: Vec<f64> = rows.iter().map(|r| r.2).collect();
            rows.iter().zip(ema_debiased(&ys, self.options.smoothing)).map(|(r, s)| (r.0, r.1, s)).collect()
        } else {
            rows
        };
        RunSeries { shown, raw }
    }

    /// A group's mean curve of `metric` with its band. Replicates share their steps, so they are
    /// aligned by step (x is the runs' mean x there: the same tokens, a similar wall time); only
    /// steps every run has logged are drawn.
    pub fn curve(&self, group: usize, metric: &Metric) -> GroupCurve {
        let series: Vec<RunSeries> =
            self.groups[group].runs.iter().map(|r| self.run_series(r, metric)).collect();
        let Some(first) = series.first() else {
            return GroupCurve::default();
        };
        let by_step: Vec<BTreeMap<u64, (f64, f64)>> =
            series.iter().map(|s| s.shown.iter().map(|&(step, x, y)| (step, (x, y))).collect()).collect();
        let mean = first
            .shown
            .iter()
            .filter_map(|&(step, _, _)| {
                let at: Vec<(f64, f64)> = by_step.iter().filter_map(|m| m.get(&step).copied()).collect();
                (at.len() == series.len()).then(|| {
                    let (xs, ys): (Vec<f64>, Vec<f64>) = at.into_iter().unzip();
                    let m = statistics::mean(&ys);
                    let (lo, hi) = match self.options.band {
                        Band::Std => (m - statistics::std(&ys), m + statistics::std(&ys)),
                        Band::MinMax => (
                            ys.iter().copied().fold(f64::INFINITY, f64::min),
                            ys.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                        ),
                    };
                    (statistics::mean(&xs), m, lo, hi)
                })
            })
            .collect();
        GroupCurve { mean, raw: series.into_iter().map(|s| s.raw).collect() }
    }

    /// `group − baseline` of the mean curves, on the group's x values inside the baseline's range.
    pub fn difference(&self, group: usize, metric: &Metric) -> Points {
        let Some(b) = self.reference[group] else {
            return Vec::new();
        };
        let base: Points = self.curve(b, metric).mean.iter().map(|p| (p.0, p.1)).collect();
        self.curve(group, metric)
            .mean
            .iter()
            .filter_map(|p| interpolate(&base, p.0).map(|y| (p.0, p.1 - y)))
            .collect()
    }

    /// Whether a group is what others are compared against.
    pub fn is_reference(&self, group: usize) -> bool {
        self.baseline == Some(group) || self.reference.contains(&Some(group))
    }

    /// Whether any group has a reference to be drawn against.
    pub fn has_differences(&self) -> bool {
        self.reference.iter().any(Option::is_some)
    }

    /// The summary table: final validation loss per group, and its test against the baseline.
    pub fn summaries(&self) -> Vec<Summary> {
        self.groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                let split = self.options.split;
                let losses = g.final_losses(split);
                let accuracies: Vec<f64> =
                    g.runs.iter().filter_map(|r| r.final_on(split).map(|v| v.1)).collect();
                let is_baseline = self.is_reference(i);
                let mut s = Summary {
                    label: g.label.clone(),
                    split: split.as_str(),
                    n: losses.len(),
                    seeds: g.seeds(),
                    loss_mean: statistics::mean(&losses),
                    loss_std: statistics::std(&losses),
                    accuracy_mean: statistics::mean(&accuracies),
                    is_baseline,
                    test: None,
                    difference: None,
                    ci95: None,
                    p_value: None,
                    verdict: match (is_baseline, self.reference[i]) {
                        (true, _) => "baseline".into(),
                        (false, Some(_)) => String::new(),
                        (false, None) => "no baseline to test against (pass --baseline RUN)".into(),
                    },
                };
                if let Some(b) = self.reference[i] {
                    self.test_against(g, &self.groups[b], &mut s);
                }
                s
            })
            .collect()
    }

    fn test_against(&self, group: &Group, base: &Group, s: &mut Summary) {
        let split = self.options.split;
        let (a, b) = (group.final_losses(split), base.final_losses(split));
        s.difference = Some(statistics::mean(&a) - statistics::mean(&b));
        let by_seed = |g: &Group| -> BTreeMap<u64, f64> {
            g.runs.iter().filter_map(|r| r.final_on(split).map(|v| (r.seed, v.0))).collect()
        };
        let (sa, sb) = (by_seed(group), by_seed(base));
        let paired_seeds = sa.len() == a.len() && sa.keys().eq(sb.keys());
        let (test, outcome): (&'static str, Option<TTest>) = if paired_seeds {
            (
                "paired",
                statistics::paired(
                    &sa.values().copied().collect::<Vec<_>>(),
                    &sb.values().copied().collect::<Vec<_>>(),
                ),
            )
        } else {
            ("welch", statistics::welch(&a, &b))
        };
        match outcome {
            Some(t) => {
                s.test = Some(test);
                s.ci95 = Some(t.ci95);
                s.p_value = Some(t.p);
                s.verdict = if t.p < 0.05 {
                    format!(
                        "{} than the baseline (p = {:.3}, {test} t-test, n = {}/{})",
                        if t.difference < 0.0 { "lower" } else { "higher" },
                        t.p,
                        a.len(),
                        b.len()
                    )
                } else {
                    format!(
                        "no significant difference (p = {:.3}, {test} t-test, n = {}/{})",
                        t.p,
                        a.len(),
                        b.len()
                    )
                };
            }
            None if a.len() < 2 || b.len() < 2 => {
                s.verdict = format!(
                    "n too small to tell (n = {} vs {}): run at least 2 seeds per arm, better 3 or more",
                    a.len(),
                    b.len()
                );
            }
            None => s.verdict = "the seeds gave identical losses: no spread to test against".into(),
        }
    }

    /// Config keys whose values differ between groups, with each group's value.
    pub fn config_diff(&self) -> Vec<(String, Vec<String>)> {
        let keys: std::collections::BTreeSet<&String> =
            self.groups.iter().flat_map(|g| g.config.keys()).collect();
        keys.into_iter()
            .filter_map(|k| {
                let values: Vec<String> = self
                    .groups
                    .iter()
                    .map(|g| g.config.get(k).map(short).unwrap_or_else(|| "—".into()))
                    .collect();
                values.iter().any(|v| v != &values[0]).then(|| (k.clone(), values))
            })
            .collect()
    }
}

/// A config value as a table shows it.
pub fn short(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Groups runs by (plugin, variant, config without the seed and the observing keys), in the
/// order first seen; labels
/// are `plugin/variant`, with the distinguishing keys added where two groups share a name.
fn group_replicates(runs: Vec<Run>, observing: &[String]) -> Vec<Group> {
    let mut groups: Vec<(String, BTreeMap<String, Value>, Vec<Run>)> = Vec::new();
    for run in runs {
        let mut config = run.config.clone();
        config.remove("seed");
        config.retain(|k, _| !observing.contains(k));
        match groups.iter_mut().find(|g| g.0 == run.name() && g.1 == config) {
            Some(g) => g.2.push(run),
            None => groups.push((run.name(), config, vec![run])),
        }
    }
    let names: Vec<String> = groups.iter().map(|g| g.0.clone()).collect();
    groups
        .iter()
        .map(|(name, config, runs)| {
            let twins: Vec<&BTreeMap<String, Value>> =
                groups.iter().filter(|g| &g.0 == name).map(|g| &g.1).collect();
            let mut label = name.clone();
            if names.iter().filter(|n| *n == name).count() > 1 {
                for (k, v) in config {
                    if twins.iter().any(|t| t.get(k) != Some(v)) {
                        label.push_str(&format!(" {k}={}", short(v)));
                    }
                }
            }
            let mut runs = runs.clone();
            runs.sort_by_key(|r| r.seed);
            Group { label, runs, config: config.clone() }
        })
        .collect()
}

fn find_baseline(
    groups: &[Group],
    options: &CompareOptions,
    notes: &mut Vec<String>,
) -> Result<Option<usize>, ReportError> {
    if let Some(dir) = &options.baseline {
        let id = dir.canonicalize().unwrap_or(dir.clone());
        return groups
            .iter()
            .position(|g| g.runs.iter().any(|r| r.dir.canonicalize().unwrap_or(r.dir.clone()) == id))
            .map(Some)
            .ok_or_else(|| {
                ReportError::Usage(format!(
                    "--baseline {} is not one of the runs compared; add it to the list",
                    dir.display()
                ))
            });
    }
    let baselines: Vec<usize> =
        (0..groups.len()).filter(|&i| groups[i].runs.iter().all(|r| r.arm == "baseline")).collect();
    match baselines[..] {
        [one] => Ok(Some(one)),
        [] => {
            notes.push("no baseline run among these; pass --baseline RUN to see differences".into());
            Ok(None)
        }
        _ => Ok(None),
    }
}

/// With several baseline configurations: each other group's reference is the baseline group
/// that differs from it in the fewest settings they share (a tie leaves it without one).
fn match_baselines(groups: &[Group], notes: &mut Vec<String>) -> Vec<Option<usize>> {
    let baselines: Vec<usize> =
        (0..groups.len()).filter(|&i| groups[i].runs.iter().all(|r| r.arm == "baseline")).collect();
    if baselines.len() < 2 {
        return vec![None; groups.len()];
    }
    let distance = |a: &Group, b: &Group| {
        a.config.iter().filter(|(k, v)| b.config.get(*k).is_some_and(|w| w != *v)).count()
    };
    let reference: Vec<Option<usize>> = (0..groups.len())
        .map(|i| {
            if baselines.contains(&i) {
                return None;
            }
            let mut by_distance: Vec<(usize, usize)> =
                baselines.iter().map(|&b| (distance(&groups[i], &groups[b]), b)).collect();
            by_distance.sort();
            match by_distance[..] {
                [(d0, b), (d1, _), ..] if d0 < d1 => Some(b),
                _ => None,
            }
        })
        .collect();
    notes.push(format!(
        "{} baseline configurations ({}): each group is compared with the baseline whose settings match its own; pass --baseline RUN to compare all with one",
        baselines.len(),
        baselines.iter().map(|&i| groups[i].label.as_str()).collect::<Vec<_>>().join(", ")
    ));
    reference
}
