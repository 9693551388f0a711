//! A tune's analysis: each arm's grid of one key (the learning rate, usually), the best point
//! of each arm by mean final *validation* loss, a warning when that best lies at an edge of the
//! grid, and best against best on the *test* split (Kaddour et al. 2023; select on val, report
//! on test), beside the loss-against-value curve of each arm.

use serde::Serialize;
use serde_json::{json, Value};

use crate::compare::{short, CompareOptions, Comparison, Summary};
use crate::plot::{Figure, Series, PALETTE};
use crate::report::{fmt, run_numbers, runs_table, summary_table, table, Body, Page, Section};
use crate::runs::{ReportError, Run};
use crate::statistics::{mean, std};
use crate::stats::Split;
use crate::study::StudyManifest;

/// One value of the tuned key in one arm, with its seeds' runs.
#[derive(Debug, Clone)]
pub struct TunePoint {
    pub value: Value,
    pub runs: Vec<Run>,
}

impl TunePoint {
    pub fn losses(&self, split: Split) -> Vec<f64> {
        self.runs.iter().filter_map(|r| r.final_on(split).map(|v| v.0)).collect()
    }

    /// The mean final validation loss: what the tuner selects on.
    pub fn selection_loss(&self) -> Option<f64> {
        let val = self.losses(Split::Val);
        (!val.is_empty()).then(|| mean(&val))
    }

    /// The value as a number, when it is one.
    pub fn x(&self) -> Option<f64> {
        self.value.as_f64().or_else(|| self.value.as_str().and_then(|s| s.parse().ok()))
    }
}

/// Where an arm's best sits when it sits at an edge of its grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Edge {
    Lowest,
    Highest,
}

/// One arm's grid and its pick.
#[derive(Debug, Clone)]
pub struct TuneArm {
    pub label: String,
    pub is_baseline: bool,
    /// In the grid's order (numeric values ascending).
    pub points: Vec<TunePoint>,
    /// The point with the lowest mean validation loss.
    pub best: usize,
}

impl TuneArm {
    /// The best at the lowest or highest value of a grid of more than one point.
    pub fn edge(&self) -> Option<Edge> {
        let n = self.points.len();
        if n < 2 {
            None
        } else if self.best == 0 {
            Some(Edge::Lowest)
        } else if self.best == n - 1 {
            Some(Edge::Highest)
        } else {
            None
        }
    }

    pub fn picked(&self) -> &TunePoint {
        &self.points[self.best]
    }
}

/// The index of the lowest selection loss (points without one never win); `None` when no
/// point has one.
pub fn pick(selection_losses: &[Option<f64>]) -> Option<usize> {
    selection_losses
        .iter()
        .enumerate()
        .filter_map(|(i, l)| l.map(|l| (i, l)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .map(|(i, _)| i)
}

/// A tune, analysed.
pub struct Tune {
    pub key: String,
    /// The baseline first, then the experiment.
    pub arms: Vec<TuneArm>,
    /// Best against best on the test split.
    pub best: Comparison,
}

impl Tune {
    pub fn new(runs: Vec<Run>, key: &str, observing: &[String]) -> Result<Self, ReportError> {
        let experiment = crate::study::experiment_label(&runs)?;
        let mut arms = Vec::new();
        for (label, is_baseline) in
            std::iter::once(("baseline".to_owned(), true)).chain(experiment.map(|e| (e, false)))
        {
            let mine: Vec<Run> =
                runs.iter().filter(|r| (r.arm == "baseline") == is_baseline).cloned().collect();
            if mine.is_empty() {
                continue;
            }
            let mut points: Vec<TunePoint> = Vec::new();
            for run in mine {
                let value = run.config.get(key).cloned().unwrap_or(Value::Null);
                match points.iter_mut().find(|p| p.value == value) {
                    Some(p) => p.runs.push(run),
                    None => points.push(TunePoint { value, runs: vec![run] }),
                }
            }
            if points.iter().all(|p| p.x().is_some()) {
                points.sort_by(|a, b| a.x().unwrap_or(0.0).total_cmp(&b.x().unwrap_or(0.0)));
            }
            let Some(best) = pick(&points.iter().map(TunePoint::selection_loss).collect::<Vec<_>>()) else {
                return Err(ReportError::Usage(format!(
                    "no {label} run of the tune has a validation loss yet: train it first"
                )));
            };
            arms.push(TuneArm { label, is_baseline, points, best });
        }
        if arms.is_empty() {
            return Err(ReportError::Usage("the tune has no runs".into()));
        }
        let picked: Vec<Run> = arms.iter().flat_map(|a| a.picked().runs.iter().cloned()).collect();
        let options =
            CompareOptions { split: Split::Test, observing: observing.to_vec(), ..CompareOptions::default() };
        let best = Comparison::new(picked, options)?;
        Ok(Self { key: key.to_owned(), arms, best })
    }

    /// A warning per arm whose best is at an edge of its grid.
    pub fn edge_notes(&self) -> Vec<String> {
        self.arms
            .iter()
            .filter_map(|a| {
                let edge = a.edge()?;
                Some(format!(
                    "{}'s best {} ({}) is the {} of its grid, so a better one may lie beyond it: widen the grid (lmhost tune … --extend)",
                    a.label,
                    self.key,
                    short(&a.picked().value),
                    match edge {
                        Edge::Lowest => "lowest",
                        Edge::Highest => "highest",
                    }
                ))
            })
            .collect()
    }

    fn grid_table(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let header = ["arm", &self.key, "n", "seeds", "final val loss", "test loss", "picked"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut rows = Vec::new();
        for arm in &self.arms {
            for (i, p) in arm.points.iter().enumerate() {
                let (val, test) = (p.losses(Split::Val), p.losses(Split::Test));
                let mean_std = |v: &[f64]| match v.len() {
                    0 => "–".to_owned(),
                    _ => format!("{:.4} ± {:.4}", mean(v), std(v)),
                };
                rows.push(vec![
                    arm.label.clone(),
                    short(&p.value),
                    p.runs.len().to_string(),
                    p.runs.iter().map(|r| r.seed.to_string()).collect::<Vec<_>>().join(","),
                    mean_std(&val),
                    mean_std(&test),
                    if i == arm.best { "★ best on val".into() } else { String::new() },
                ]);
            }
        }
        (header, rows)
    }

    /// Mean validation loss against the key, one line per arm, a band of ±1 std over seeds
    /// and each seed's line faint behind it.
    fn figure(&self) -> Figure {
        let numeric = self.arms.iter().all(|a| a.points.iter().all(|p| p.x().is_some()));
        let xs: Vec<f64> = self.arms.iter().flat_map(|a| a.points.iter().filter_map(TunePoint::x)).collect();
        let log_x = numeric
            && xs.iter().all(|x| *x > 0.0)
            && xs.iter().copied().fold(f64::NEG_INFINITY, f64::max)
                >= 3.0 * xs.iter().copied().fold(f64::INFINITY, f64::min);
        let series = self
            .arms
            .iter()
            .enumerate()
            .map(|(i, arm)| {
                let x = |j: usize, p: &TunePoint| if numeric { p.x().unwrap_or(0.0) } else { (j + 1) as f64 };
                let mut seeds: Vec<u64> =
                    arm.points.iter().flat_map(|p| p.runs.iter().map(|r| r.seed)).collect();
                seeds.sort_unstable();
                seeds.dedup();
                Series {
                    label: format!("{} (best {} = {})", arm.label, self.key, short(&arm.picked().value)),
                    color: PALETTE[i % PALETTE.len()].into(),
                    line: arm
                        .points
                        .iter()
                        .enumerate()
                        .filter_map(|(j, p)| p.selection_loss().map(|l| (x(j, p), l)))
                        .collect(),
                    band: arm
                        .points
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.losses(Split::Val).len() > 1)
                        .map(|(j, p)| {
                            let v = p.losses(Split::Val);
                            (x(j, p), mean(&v) - std(&v), mean(&v) + std(&v))
                        })
                        .collect(),
                    raw: seeds
                        .iter()
                        .map(|&s| {
                            arm.points
                                .iter()
                                .enumerate()
                                .filter_map(|(j, p)| {
                                    let r = p.runs.iter().find(|r| r.seed == s)?;
                                    Some((x(j, p), r.final_val()?.0))
                                })
                                .collect()
                        })
                        .collect(),
                    scatter: false,
                }
            })
            .collect();
        Figure {
            title: format!("final validation loss against {}", self.key),
            x_label: if numeric { self.key.clone() } else { format!("{} (position in the grid)", self.key) },
            y_label: "nats/token".into(),
            log_x,
            series,
            ..Figure::default()
        }
    }

    /// The tune's report page.
    pub(crate) fn page(&self, manifest: &StudyManifest) -> Page {
        let summaries = self.best.summaries();
        let picks: Vec<String> = self
            .arms
            .iter()
            .map(|a| format!("{} at {} = {}", a.label, self.key, short(&a.picked().value)))
            .collect();
        let mut notes = self.edge_notes();
        notes.extend(self.best.notes.iter().cloned());
        let all_runs = self.arms.iter().flat_map(|a| {
            a.points.iter().flat_map(move |p| {
                p.runs.iter().map(move |r| (format!("{} {}={}", a.label, self.key, short(&p.value)), r))
            })
        });
        Page {
            title: format!("tune of {}: {}", self.key, self.arms.iter().map(|a| a.label.as_str()).collect::<Vec<_>>().join(" vs ")),
            lead: format!(
                "Each arm trained at every {} of its grid, each point with its own fully decayed schedule; each arm's best is picked by mean final validation loss and the picks are compared on the held-out test split. Made by: {}",
                self.key, manifest.command
            ),
            notes,
            sections: vec![
                Section::new(
                    "Best against best, on the test split",
                    Some(&format!("Picked on validation loss: {}. Δ, 95 % CI and p across seeds.", picks.join("; "))),
                    table(summary_table(&summaries)),
                ),
                Section::new(&format!("Loss against {}", self.key), None, Body::Figures),
                Section::new("The grid", None, Body::Table(self.grid_table().0, self.grid_table().1)),
                Section::new("Runs", None, table(runs_table(all_runs))),
            ],
            figures: vec![("tune".into(), self.figure())],
            numbers: self.numbers(manifest, &summaries),
        }
    }

    fn numbers(&self, manifest: &StudyManifest, summaries: &[Summary]) -> Value {
        json!({
            "kind": "tune",
            "name": manifest.name,
            "command": manifest.command,
            "key": self.key,
            "selected_on": "val",
            "reported_on": "test",
            "arms": self.arms.iter().map(|a| json!({
                "label": a.label,
                "is_baseline": a.is_baseline,
                "picked": a.picked().value,
                "edge": a.edge(),
                "grid": a.points.iter().map(|p| {
                    let (val, test) = (p.losses(Split::Val), p.losses(Split::Test));
                    json!({
                        "value": p.value,
                        "n": p.runs.len(),
                        "seeds": p.runs.iter().map(|r| r.seed).collect::<Vec<_>>(),
                        "val_loss_mean": (!val.is_empty()).then(|| mean(&val)),
                        "val_loss_std": (!val.is_empty()).then(|| std(&val)),
                        "test_loss_mean": (!test.is_empty()).then(|| mean(&test)),
                        "test_loss_std": (!test.is_empty()).then(|| std(&test)),
                    })
                }).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "best_vs_best": summaries,
            "runs": self.arms.iter().flat_map(|a| a.points.iter().flat_map(move |p| p.runs.iter().map(move |r| run_numbers(&a.label, r)))).collect::<Vec<_>>(),
        })
    }
}

/// A point's numbers as the report prints them (kept for the console summary).
pub fn describe_pick(arm: &TuneArm, key: &str) -> String {
    let p = arm.picked();
    format!(
        "{}: best {key}={} (val {}, test {})",
        arm.label,
        short(&p.value),
        fmt(p.selection_loss(), 4),
        fmt(Some(mean(&p.losses(Split::Test))).filter(|v| v.is_finite()), 4)
    )
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};

    use super::*;
    use crate::stats::{Stats, StatsRow};

    fn row(split: Split, loss: f64) -> StatsRow {
        StatsRow {
            flops: Some(1e9),
            loss: Some(loss),
            accuracy: Some(0.1),
            ..StatsRow::at(10, 1000, 1.0, split)
        }
    }

    /// A finished run of `arm` at `lr` and `seed` with these final losses.
    pub(crate) fn run(arm: &str, lr: f64, seed: u64, val: f64, test: f64) -> Run {
        let mut config = BTreeMap::new();
        config.insert("lr".to_owned(), json!(lr));
        config.insert("seed".to_owned(), json!(seed));
        Run {
            dir: format!("runs/{arm}-{lr}-{seed}").into(),
            id: format!("{arm}-{lr}-{seed}"),
            arm: if arm == "baseline" { "baseline".into() } else { "experiment".into() },
            plugin: arm.into(),
            variant: None,
            status: "finished".into(),
            seed,
            config,
            tokenizer: "t".into(),
            tokenizer_content: None,
            val_set: "v".into(),
            params_train: Some(1),
            params_prod: Some(1),
            flops_per_token: Some(1e6),
            tokens_per_s: None,
            wall_s: None,
            stats: Stats {
                rows: vec![row(Split::Val, val), row(Split::Test, test)],
                metadata: HashMap::new(),
                finished: true,
                torn: None,
            },
            notes: Vec::new(),
        }
    }

    #[test]
    fn the_tuner_picks_the_lowest_mean_and_skips_points_without_one() {
        assert_eq!(pick(&[Some(3.0), Some(2.5), Some(2.7)]), Some(1));
        assert_eq!(pick(&[None, Some(2.9), Some(2.7)]), Some(2));
        assert_eq!(pick(&[None, None]), None);
    }

    /// Baseline: val loss is lowest at lr 2e-3 (interior); the experiment's val is lowest at its
    /// top lr 4e-3 (an edge), while its *test* loss would favour 1e-3: the report must follow val.
    fn synthetic() -> Vec<Run> {
        let mut runs = Vec::new();
        for seed in 1..=2 {
            let s = seed as f64 * 0.01;
            for (lr, val, test) in [(1e-3, 3.0, 3.1), (2e-3, 2.8, 2.9), (4e-3, 2.9, 3.0)] {
                runs.push(run("baseline", lr, seed, val + s, test + s));
            }
            for (lr, val, test) in [(1e-3, 2.9, 2.0), (2e-3, 2.8, 2.85), (4e-3, 2.7, 2.8)] {
                runs.push(run("idea", lr, seed, val + s, test + 2.0 * s));
            }
        }
        runs
    }

    #[test]
    fn a_tune_selects_on_val_reports_on_test_and_flags_an_edge() {
        let tune = Tune::new(synthetic(), "lr", &[]).unwrap();
        let (base, idea) = (&tune.arms[0], &tune.arms[1]);
        assert_eq!((base.label.as_str(), idea.label.as_str()), ("baseline", "idea"));
        assert_eq!(base.picked().value, json!(2e-3));
        assert_eq!(idea.picked().value, json!(4e-3), "the lowest val loss, not the lowest test loss");
        assert_eq!((base.edge(), idea.edge()), (None, Some(Edge::Highest)));
        let notes = tune.edge_notes();
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].contains("idea's best lr (0.004) is the highest of its grid")
                && notes[0].contains("--extend")
        );
        // Best against best on test: idea (2.8 + 0.02·seed) vs baseline (2.9 + 0.01·seed).
        let summaries = tune.best.summaries();
        let idea_summary = summaries.iter().find(|s| !s.is_baseline).unwrap();
        assert_eq!(idea_summary.split, "test");
        assert!((idea_summary.loss_mean - 2.83).abs() < 1e-9, "{idea_summary:?}");
        assert!((idea_summary.difference.unwrap() - (2.83 - 2.915)).abs() < 1e-9);
        assert_eq!(idea_summary.test, Some("paired"));
    }

    #[test]
    fn the_tune_page_holds_the_picks_and_the_test_comparison() {
        let tune = Tune::new(synthetic(), "lr", &[]).unwrap();
        let manifest = StudyManifest {
            name: "tune-idea-lr".into(),
            kind: crate::study::StudyKind::Tune { key: "lr".into() },
            command: "lmhost tune idea lr=1e-3,2e-3,4e-3 seeds=2".into(),
            runs: Vec::new(),
        };
        let page = tune.page(&manifest);
        let numbers = &page.numbers;
        assert_eq!(numbers["arms"][0]["picked"], json!(2e-3));
        assert_eq!(numbers["arms"][1]["picked"], json!(4e-3));
        assert_eq!(numbers["arms"][1]["edge"], json!("highest"));
        assert_eq!(numbers["reported_on"], json!("test"));
        assert_eq!(numbers["best_vs_best"][1]["split"], json!("test"));
        assert_eq!(page.figures[0].1.series.len(), 2);
        assert!(page.figures[0].1.log_x);
    }

    #[test]
    fn a_tune_of_one_variant_names_it_and_one_of_several_names_the_plugin() {
        let with_variant = |variant_of: fn(f64) -> &'static str| -> Vec<Run> {
            synthetic()
                .into_iter()
                .map(|mut r| {
                    if r.arm != "baseline" {
                        r.variant = Some(variant_of(r.config["lr"].as_f64().unwrap()).into());
                    }
                    r
                })
                .collect()
        };
        let one = Tune::new(with_variant(|_| "small"), "lr", &[]).unwrap();
        assert_eq!(one.arms[1].label, "idea/small");
        let mixed =
            Tune::new(with_variant(|lr| if lr < 2e-3 { "small" } else { "large" }), "lr", &[]).unwrap();
        assert_eq!(mixed.arms[1].label, "idea");
    }
}
