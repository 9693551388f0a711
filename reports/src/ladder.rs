//! A ladder's analysis: both arms at growing sizes, tokens ∝ parameters; per arm a scaling
//! law `L(C) = E + A·C^(−α)` of final test loss against training FLOPs with percentile bootstrap
//! intervals over seeds, and the idea's effective compute multiplier at each size and at 10× the
//! largest (an extrapolation). See `../shared/EXPERIMENTS.md`, "A fair comparison".

use serde::Serialize;
use serde_json::{json, Value};

use crate::compare::{CompareOptions, Comparison};
use crate::plot::{tick_label, Figure, Series, PALETTE};
use crate::report::{runs_table, table, Body, Page, Section};
use crate::runs::{ReportError, Run};
use crate::scaling::{compute_multiplier, quantile, PowerLaw, Resampler};
use crate::statistics::{mean, std};
use crate::stats::Split;
use crate::study::{LadderSize, StudyKind, StudyManifest};

/// Bootstrap resamples of the seeds behind every interval.
pub const RESAMPLES: usize = 400;

/// How far past the largest size the multiplier is extrapolated.
pub const EXTRAPOLATION: f64 = 10.0;

/// One arm at one size: its seeds' runs.
#[derive(Debug, Clone)]
pub struct Rung {
    pub size: usize,
    pub runs: Vec<Run>,
}

impl Rung {
    /// Each run's (training FLOPs, final test loss).
    pub fn points(&self) -> Vec<(f64, f64)> {
        self.runs
            .iter()
            .filter_map(|r| Some((r.flops_per_token? * r.tokens() as f64, r.final_on(Split::Test)?.0)))
            .collect()
    }

    /// The mean training FLOPs of the rung's runs (the same for every seed).
    pub fn flops(&self) -> f64 {
        mean(&self.points().iter().map(|p| p.0).collect::<Vec<_>>())
    }

    pub fn test_losses(&self) -> Vec<f64> {
        self.points().iter().map(|p| p.1).collect()
    }
}

/// A 95 % interval.
pub type Interval = (f64, f64);

/// A fitted law and its bootstrap intervals.
#[derive(Debug, Clone, Serialize)]
pub struct Fit {
    pub law: PowerLaw,
    pub e95: Interval,
    pub a95: Interval,
    pub alpha95: Interval,
    /// The root mean square of log L − log L̂ over the runs.
    pub log_rms: f64,
    /// The law fitted to each bootstrap resample (`None` where one did not fit), the same
    /// resamples in every arm: each interval, band and multiplier is read from these.
    #[serde(skip)]
    pub resamples: Vec<Option<PowerLaw>>,
}

#[derive(Debug, Clone)]
pub struct LadderArm {
    pub label: String,
    pub is_baseline: bool,
    pub rungs: Vec<Rung>,
    pub fit: Option<Fit>,
}

impl LadderArm {
    fn points(&self) -> Vec<(f64, f64)> {
        self.rungs.iter().flat_map(Rung::points).collect()
    }
}

/// The multiplier at one compute.
#[derive(Debug, Clone, Serialize)]
pub struct Multiplier {
    /// The size it is read at (`None`: the extrapolation).
    pub size: Option<usize>,
    /// The experiment's training FLOPs there.
    pub flops: f64,
    pub multiplier: f64,
    pub ci95: Interval,
    pub extrapolation: bool,
}

/// A ladder, analysed.
pub struct Ladder {
    pub sizes: Vec<LadderSize>,
    /// The baseline first, then the experiment.
    pub arms: Vec<LadderArm>,
    /// The experiment's multiplier at each size, then at 10× the largest (empty without an
    /// experiment or a fit).
    pub multipliers: Vec<Multiplier>,
    /// Each size's runs compared on the test split.
    pub per_size: Vec<Option<Comparison>>,
    pub notes: Vec<String>,
}

impl Ladder {
    pub fn new(runs: Vec<Run>, manifest: &StudyManifest, observing: &[String]) -> Result<Self, ReportError> {
        let StudyKind::Ladder { sizes, .. } = &manifest.kind else {
            return Err(ReportError::Usage(format!("{} is not a ladder", manifest.name)));
        };
        if let Some(r) =
            runs.iter().find(|r| r.final_on(Split::Test).is_none() || r.flops_per_token.is_none())
        {
            return Err(ReportError::Usage(format!(
                "{} has no test loss or no FLOPs count: a ladder fits test loss against FLOPs (finish it, or train it with test_fraction > 0)",
                r.id
            )));
        }
        let experiment = crate::study::experiment_label(&runs)?;
        let mut notes = Vec::new();
        let mut arms = Vec::new();
        for (label, is_baseline) in
            std::iter::once(("baseline".to_owned(), true)).chain(experiment.map(|e| (e, false)))
        {
            let rungs: Vec<Rung> = (0..sizes.len())
                .map(|i| Rung {
                    size: i,
                    runs: runs
                        .iter()
                        .filter(|r| (r.arm == "baseline") == is_baseline && sizes[i].holds(r))
                        .cloned()
                        .collect(),
                })
                .filter(|r| !r.runs.is_empty())
                .collect();
            if rungs.is_empty() {
                continue;
            }
            let mut arm = LadderArm { label, is_baseline, rungs, fit: None };
            arm.fit = fit_with_intervals(&arm);
            if arm.fit.is_none() {
                notes.push(format!(
                    "{}: no scaling law fits (it needs three sizes or more, and a loss that falls with compute)",
                    arm.label
                ));
            }
            arms.push(arm);
        }
        let multipliers = match (arms.first(), arms.get(1)) {
            (Some(b), Some(e)) if b.fit.is_some() && e.fit.is_some() => multipliers(b, e),
            _ => Vec::new(),
        };
        let per_size = (0..sizes.len())
            .map(|i| {
                let at: Vec<Run> = runs.iter().filter(|r| sizes[i].holds(r)).cloned().collect();
                let options = CompareOptions {
                    split: Split::Test,
                    observing: observing.to_vec(),
                    ..CompareOptions::default()
                };
                (!at.is_empty()).then(|| Comparison::new(at, options).ok()).flatten()
            })
            .collect();
        Ok(Self { sizes: sizes.clone(), arms, multipliers, per_size, notes })
    }

    /// Arm `arm`'s rung at size `size`.
    fn rung(&self, arm: usize, size: usize) -> Option<&Rung> {
        self.arms.get(arm)?.rungs.iter().find(|r| r.size == size)
    }

    fn fits_table(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let header = vec!["arm", "E", "A", "α", "sizes", "runs", "log-loss RMS"];
        let ci = |v: f64, (lo, hi): Interval, digits: usize| {
            format!("{v:.digits$} [{lo:.digits$}, {hi:.digits$}]")
        };
        let rows = self
            .arms
            .iter()
            .map(|a| {
                let (e, aa, alpha, rms) = match &a.fit {
                    Some(f) => (
                        ci(f.law.e, f.e95, 3),
                        format!("{:.3e} [{:.2e}, {:.2e}]", f.law.a, f.a95.0, f.a95.1),
                        ci(f.law.alpha, f.alpha95, 3),
                        format!("{:.4}", f.log_rms),
                    ),
                    None => ("–".into(), "–".into(), "–".into(), "–".into()),
                };
                vec![
                    a.label.clone(),
                    e,
                    aa,
                    alpha,
                    a.rungs.len().to_string(),
                    a.points().len().to_string(),
                    rms,
                ]
            })
            .collect();
        (header, rows)
    }

    fn sizes_table(&self) -> (Vec<&'static str>, Vec<Vec<String>>) {
        let header = vec![
            "size",
            "heads",
            "params",
            "steps",
            "lr",
            "baseline FLOPs",
            "baseline test loss",
            "experiment FLOPs",
            "experiment test loss",
            "Δ [95% CI], p",
            "compute multiplier [95% CI]",
        ];
        let loss = |v: &[f64]| match v.len() {
            0 => "–".to_owned(),
            _ => format!("{:.4} ± {:.4}", mean(v), std(v)),
        };
        let mut rows: Vec<Vec<String>> = self
            .sizes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let (b, e) = (self.rung(0, i), self.rung(1, i));
                let test = self.per_size[i]
                    .as_ref()
                    .and_then(|c| c.summaries().into_iter().find(|s| !s.is_baseline));
                vec![
                    s.name(),
                    s.n_head.to_string(),
                    s.params.to_string(),
                    s.steps.to_string(),
                    tick_label(s.lr),
                    b.map_or("–".into(), |r| format!("{:.3e}", r.flops())),
                    b.map_or("–".into(), |r| loss(&r.test_losses())),
                    e.map_or("–".into(), |r| format!("{:.3e}", r.flops())),
                    e.map_or("–".into(), |r| loss(&r.test_losses())),
                    test.and_then(|t| {
                        let (lo, hi) = t.ci95?;
                        Some(format!("{:+.4} [{lo:+.4}, {hi:+.4}], p = {:.3}", t.difference?, t.p_value?))
                    })
                    .unwrap_or_else(|| "–".into()),
                    self.multipliers.iter().find(|m| m.size == Some(i)).map_or("–".into(), multiplier_cell),
                ]
            })
            .collect();
        if let Some(m) = self.multipliers.iter().find(|m| m.extrapolation) {
            let mut row = vec!["–".to_owned(); header.len()];
            row[0] = format!("{EXTRAPOLATION}× the largest (extrapolation)");
            row[7] = format!("{:.3e}", m.flops);
            row[10] = multiplier_cell(m);
            rows.push(row);
        }
        (header, rows)
    }

    /// Test loss against FLOPs on log–log axes: each arm's runs, its fit and the fit's band.
    fn figure(&self) -> Figure {
        let c_all: Vec<f64> = self.arms.iter().flat_map(|a| a.points().into_iter().map(|p| p.0)).collect();
        let lo = c_all.iter().copied().fold(f64::INFINITY, f64::min) / 2.0;
        let hi = c_all.iter().copied().fold(f64::NEG_INFINITY, f64::max) * EXTRAPOLATION;
        let grid: Vec<f64> = (0..=60).map(|i| lo * (hi / lo).powf(i as f64 / 60.0)).collect();
        let mut series = Vec::new();
        for (i, arm) in self.arms.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()].to_owned();
            series.push(Series {
                label: format!("{} (runs)", arm.label),
                color: color.clone(),
                line: arm.rungs.iter().map(|r| (r.flops(), mean(&r.test_losses()))).collect(),
                raw: arm.rungs.iter().map(|r| r.points()).collect(),
                scatter: true,
                ..Series::default()
            });
            if let Some(fit) = &arm.fit {
                let band = band(fit, &grid);
                series.push(Series {
                    label: format!(
                        "{} fit: {:.3} + {:.2e}·C^−{:.3}",
                        arm.label, fit.law.e, fit.law.a, fit.law.alpha
                    ),
                    color,
                    line: grid.iter().map(|&c| (c, fit.law.loss(c))).collect(),
                    band,
                    ..Series::default()
                });
            }
        }
        Figure {
            title: "final test loss against training FLOPs".into(),
            x_label: "training FLOPs".into(),
            y_label: "test loss, nats/token".into(),
            log_x: true,
            log_y: true,
            series,
            ..Figure::default()
        }
    }

    pub(crate) fn page(&self, manifest: &StudyManifest) -> Page {
        let (tokens_per_param, lr_rule) = match &manifest.kind {
            StudyKind::Ladder { tokens_per_param, lr_rule, .. } => (*tokens_per_param, lr_rule.as_str()),
            StudyKind::Tune { .. } => (f64::NAN, ""),
        };
        let label = |i: usize| self.arms.get(i).map_or("baseline", |a| a.label.as_str());
        let mut notes = self.notes.clone();
        notes.extend(self.per_size.iter().flatten().flat_map(|c| c.notes.iter().cloned()));
        let all_runs = self.arms.iter().flat_map(|a| {
            a.rungs.iter().flat_map(move |r| {
                r.runs.iter().map(move |run| (format!("{} {}", a.label, self.sizes[r.size].name()), run))
            })
        });
        Page {
            title: format!("ladder: {} vs {}", label(1), label(0)),
            lead: format!(
                "Both arms at {} sizes, depth and width grown together; each trained for {tokens_per_param} tokens per baseline parameter (the same steps in both arms); lr rule: {lr_rule}. L(C) = E + A·C^(−α) fitted per arm to final test loss against training FLOPs (least squares weighted by 1/L², i.e. in log loss); intervals: percentile bootstrap over seeds ({RESAMPLES} resamples). Compute multiplier at C: the baseline's compute to reach the loss the experiment's law reaches at C, over C (> 1: the idea is worth more compute). Made by: {}",
                self.sizes.len(),
                manifest.command
            ),
            notes,
            sections: vec![
                Section::new("Scaling laws", Some("L(C) = E + A·C^(−α), C in training FLOPs; 95 % intervals in brackets."), table(self.fits_table())),
                Section::new(
                    "Sizes and the effective compute multiplier",
                    Some("The multiplier is read from the two fits at the experiment's FLOPs of each size; the last row extrapolates past every trained size."),
                    table(self.sizes_table()),
                ),
                Section::new("Loss against compute", None, Body::Figures),
                Section::new("Runs", None, table(runs_table(all_runs))),
            ],
            figures: vec![("ladder".into(), self.figure())],
            numbers: self.numbers(manifest),
        }
    }

    fn numbers(&self, manifest: &StudyManifest) -> Value {
        json!({
            "kind": "ladder",
            "name": manifest.name,
            "command": manifest.command,
            "study": manifest.kind,
            "resamples": RESAMPLES,
            "arms": self.arms.iter().map(|a| json!({
                "label": a.label,
                "is_baseline": a.is_baseline,
                "fit": a.fit,
                "points": a.rungs.iter().map(|r| json!({
                    "size": self.sizes[r.size].name(),
                    "flops": r.flops(),
                    "test_loss_mean": mean(&r.test_losses()),
                    "test_loss_std": std(&r.test_losses()),
                    "seeds": r.runs.iter().map(|run| run.seed).collect::<Vec<_>>(),
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "multipliers": self.multipliers.iter().map(|m| json!({
                "size": m.size.map(|i| self.sizes[i].name()),
                "flops": m.flops,
                "multiplier": finite(m.multiplier),
                "ci95": [finite(m.ci95.0), finite(m.ci95.1)],
                "extrapolation": m.extrapolation,
            })).collect::<Vec<_>>(),
            "runs": self.arms.iter().flat_map(|a| a.rungs.iter().flat_map(move |r| r.runs.iter().map(move |run| crate::report::run_numbers(&a.label, run)))).collect::<Vec<_>>(),
        })
    }
}

/// JSON has no infinity: an unreachable loss is written as null (the table says ∞).
fn finite(v: f64) -> Option<f64> {
    v.is_finite().then_some(v)
}

fn multiplier_cell(m: &Multiplier) -> String {
    let f = |v: f64| if v.is_finite() { format!("{v:.2}×") } else { "∞".into() };
    format!("{} [{}, {}]", f(m.multiplier), f(m.ci95.0), f(m.ci95.1))
}

/// The arm's runs with each rung's seeds drawn again with replacement.
fn resample(arm: &LadderArm, r: &mut Resampler) -> Vec<(f64, f64)> {
    arm.rungs
        .iter()
        .flat_map(|rung| {
            let points = rung.points();
            (0..points.len()).map(|_| points[r.index(points.len())]).collect::<Vec<_>>()
        })
        .collect()
}

fn interval(values: &[f64]) -> Interval {
    (quantile(values, 0.025), quantile(values, 0.975))
}

/// The arm's law and its intervals. Every arm draws the same sequence of resamples, so in the
/// i-th resample both arms keep the same seeds (they share each seed's data order): a paired
/// bootstrap.
fn fit_with_intervals(arm: &LadderArm) -> Option<Fit> {
    let points = arm.points();
    let law = PowerLaw::fit(&points)?;
    let mut r = Resampler::new(1);
    let resamples: Vec<Option<PowerLaw>> =
        (0..RESAMPLES).map(|_| PowerLaw::fit(&resample(arm, &mut r))).collect();
    let of = |f: fn(&PowerLaw) -> f64| interval(&resamples.iter().flatten().map(f).collect::<Vec<_>>());
    Some(Fit {
        law,
        e95: of(|l| l.e),
        a95: of(|l| l.a),
        alpha95: of(|l| l.alpha),
        log_rms: law.log_rms(&points),
        resamples,
    })
}

/// The band of the fitted curve at each `grid` compute: 2.5–97.5 % of the resampled fits.
fn band(fit: &Fit, grid: &[f64]) -> Vec<(f64, f64, f64)> {
    grid.iter()
        .map(|&c| {
            let (lo, hi) = interval(&fit.resamples.iter().flatten().map(|l| l.loss(c)).collect::<Vec<_>>());
            (c, lo, hi)
        })
        .collect()
}

/// The experiment's multiplier over the baseline at each of its sizes' FLOPs and at 10× the
/// largest, with intervals from the arms' paired resamples.
fn multipliers(base: &LadderArm, exp: &LadderArm) -> Vec<Multiplier> {
    let (Some(bf), Some(ef)) = (&base.fit, &exp.fit) else { return Vec::new() };
    let mut at: Vec<(Option<usize>, f64)> = exp.rungs.iter().map(|r| (Some(r.size), r.flops())).collect();
    let largest = at.iter().map(|a| a.1).fold(0.0, f64::max);
    at.push((None, largest * EXTRAPOLATION));
    let pairs: Vec<(PowerLaw, PowerLaw)> =
        bf.resamples.iter().zip(&ef.resamples).filter_map(|(b, e)| Some(((*b)?, (*e)?))).collect();
    at.into_iter()
        .map(|(size, c)| Multiplier {
            size,
            flops: c,
            multiplier: compute_multiplier(&bf.law, &ef.law, c),
            ci95: interval(&pairs.iter().map(|(b, e)| compute_multiplier(b, e, c)).collect::<Vec<_>>()),
            extrapolation: size.is_none(),
        })
        .collect()
}
