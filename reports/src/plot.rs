//! Line plots as self-contained SVG: a mean line per group with its band across seeds, each
//! run's raw points faint behind it, nice ticks on a linear or log x axis, and a legend. The same
//! SVG is inlined in the HTML, written as `.svg`, and rasterised to `.png`.

use std::fmt::Write;

/// Colours for groups, in order (Tableau 10).
pub const PALETTE: [&str; 10] = [
    "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
    "#bab0ac",
];

/// The most points one path draws; longer series are thinned (after smoothing).
const MAX_POINTS: usize = 600;

const WIDTH: f64 = 860.0;
const HEIGHT: f64 = 340.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 250.0;
const TOP: f64 = 34.0;
const BOTTOM: f64 = 46.0;

#[derive(Debug, Clone, Default)]
pub struct Series {
    pub label: String,
    pub color: String,
    /// The line: mean across seeds (smoothed where the metric is).
    pub line: Vec<(f64, f64)>,
    /// (x, low, high) around the line.
    pub band: Vec<(f64, f64, f64)>,
    /// Each run's raw points, drawn faint.
    pub raw: Vec<Vec<(f64, f64)>>,
    /// Markers at the line's points, no line between them (measurements beside a fitted curve).
    pub scatter: bool,
}

#[derive(Debug, Clone, Default)]
pub struct Figure {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub log_x: bool,
    /// A log y axis (a scaling law is a line on log–log axes).
    pub log_y: bool,
    /// Draw a dashed line at y = 0 (difference plots).
    pub zero_line: bool,
    /// Draw only the points with x in this range (a zoomed view); `None`: all of them.
    pub x_range: Option<(f64, f64)>,
    pub series: Vec<Series>,
}

/// Series with at most this many points get a marker at each: a line through two points (or
/// one) would be too short to see.
const MARKED: usize = 24;

/// Pixels a log axis keeps left of its first decade for x = 0 (the step-0 evaluation).
const ZERO_GAP: f64 = 28.0;

/// A linear or log10 map from data to pixels. A log axis that has to show x = 0 draws it at its
/// left edge, a short gap before the log part begins.
struct Scale {
    lo: f64,
    hi: f64,
    log: bool,
    zero: bool,
    from: f64,
    to: f64,
}

impl Scale {
    fn px(&self, v: f64) -> f64 {
        if self.log && self.zero && v <= 0.0 {
            return self.from;
        }
        let from = if self.log && self.zero { self.from + ZERO_GAP } else { self.from };
        let f = |v: f64| if self.log { v.log10() } else { v };
        let (lo, hi) = (f(self.lo), f(self.hi));
        let t = if hi > lo { (f(v) - lo) / (hi - lo) } else { 0.5 };
        from + t * (self.to - from)
    }

    /// Whether a point can be drawn on this axis.
    fn shows(&self, v: f64) -> bool {
        v.is_finite() && (!self.log || v > 0.0 || (self.zero && v == 0.0))
    }
}

impl Figure {
    /// The figure with only the points whose x lies in `lo..=hi`.
    fn zoomed(&self, (lo, hi): (f64, f64)) -> Figure {
        let keep = |x: f64| x >= lo && x <= hi;
        let series = self
            .series
            .iter()
            .map(|s| Series {
                line: s.line.iter().copied().filter(|p| keep(p.0)).collect(),
                band: s.band.iter().copied().filter(|b| keep(b.0)).collect(),
                raw: s.raw.iter().map(|r| r.iter().copied().filter(|p| keep(p.0)).collect()).collect(),
                ..s.clone()
            })
            .collect();
        Figure { series, x_range: None, ..self.clone() }
    }

    pub fn is_empty(&self) -> bool {
        self.series.iter().all(|s| s.line.is_empty())
    }

    pub fn to_svg(&self) -> String {
        if let Some(range) = self.x_range {
            return self.zoomed(range).to_svg();
        }
        let points =
            || self.series.iter().flat_map(|s| s.line.iter().copied().chain(s.raw.iter().flatten().copied()));
        let zero = self.log_x && points().any(|p| p.0 == 0.0);
        let mut xs: Vec<f64> =
            points().map(|p| p.0).filter(|x| x.is_finite() && (!self.log_x || *x > 0.0)).collect();
        // The y range follows the lines and bands; a raw outlier must not flatten them.
        let mut ys: Vec<f64> = self
            .series
            .iter()
            .flat_map(|s| s.line.iter().map(|p| p.1).chain(s.band.iter().flat_map(|b| [b.1, b.2])))
            .filter(|y| y.is_finite() && (!self.log_y || *y > 0.0))
            .collect();
        if self.zero_line {
            ys.push(0.0);
        }
        if xs.is_empty() {
            xs.push(1.0);
        }
        if ys.is_empty() {
            ys.push(0.0);
        }
        let (x_lo, x_hi) = (min(&xs), max(&xs));
        let (y_lo, y_hi) = match self.log_y {
            true => {
                let pad = (max(&ys) / min(&ys)).max(1.0 + 1e-12).powf(0.05);
                (min(&ys) / pad, max(&ys) * pad)
            }
            false => {
                let pad = (max(&ys) - min(&ys)).max(1e-12) * 0.05;
                (min(&ys) - pad, max(&ys) + pad)
            }
        };
        let x = Scale { lo: x_lo, hi: x_hi, log: self.log_x, zero, from: LEFT, to: WIDTH - RIGHT };
        let y = Scale { lo: y_lo, hi: y_hi, log: self.log_y, zero: false, from: HEIGHT - BOTTOM, to: TOP };

        let mut svg = String::new();
        let _ = write!(
            svg,
            r#"<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="11" data-axes="{}"><rect width="100%" height="100%" fill="white"/><text x="{LEFT}" y="20" font-size="13" font-weight="bold">{}</text>"#,
            // How pixels map back to data, for a page that reads values off the plot.
            escape(
                &serde_json::json!({
                    "x": [x.lo, x.hi, x.from + if x.log && x.zero { ZERO_GAP } else { 0.0 }, x.to],
                    "y": [y.lo, y.hi, y.from, y.to],
                    "log_x": x.log,
                    "log_y": y.log,
                })
                .to_string()
            ),
            escape(&self.title)
        );
        self.axes(&mut svg, &x, &y);
        for s in &self.series {
            for run in &s.raw {
                let _ = write!(
                    svg,
                    r#"<path class="raw" d="{}" fill="none" stroke="{}" stroke-width="0.8" stroke-opacity="0.22"/>"#,
                    path(&thin(run), &x, &y),
                    s.color
                );
            }
            if !s.band.is_empty() {
                let band = thin(&s.band.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>())
                    .into_iter()
                    .chain(thin(&s.band.iter().map(|b| (b.0, b.2)).collect::<Vec<_>>()).into_iter().rev())
                    .collect::<Vec<_>>();
                let _ = write!(
                    svg,
                    r#"<path class="band" d="{}Z" fill="{}" fill-opacity="0.16" stroke="none"/>"#,
                    path(&band, &x, &y),
                    s.color
                );
            }
            let line = thin(&s.line);
            let stroke = if s.scatter { "none" } else { s.color.as_str() };
            let _ = write!(
                svg,
                r#"<path class="series" data-label="{}" data-points="{}" d="{}" fill="none" stroke="{}" stroke-width="1.8"><title>{}</title></path>"#,
                escape(&s.label),
                line.len(),
                path(&line, &x, &y),
                stroke,
                escape(&s.label)
            );
            if line.len() <= MARKED || s.scatter {
                for &(px, py) in line.iter().filter(|p| x.shows(p.0) && p.1.is_finite()) {
                    let _ = write!(
                        svg,
                        r#"<circle class="marker" cx="{:.1}" cy="{:.1}" r="3" fill="{}"><title>{}: {}</title></circle>"#,
                        x.px(px),
                        y.px(py),
                        s.color,
                        escape(&s.label),
                        tick_label(py)
                    );
                }
            }
        }
        self.legend(&mut svg);
        svg.push_str("</svg>");
        svg
    }

    fn axes(&self, svg: &mut String, x: &Scale, y: &Scale) {
        let (x0, x1, y0, y1) = (LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP);
        let _ = write!(
            svg,
            r##"<rect x="{x0}" y="{y1}" width="{}" height="{}" fill="none" stroke="#999"/>"##,
            x1 - x0,
            y0 - y1
        );
        let mut x_ticks = if self.log_x { log_ticks(x.lo, x.hi) } else { linear_ticks(x.lo, x.hi) };
        if x.zero {
            x_ticks.insert(0, 0.0);
        }
        for t in x_ticks {
            let px = x.px(t);
            let _ = write!(
                svg,
                r##"<line x1="{px:.1}" y1="{y1}" x2="{px:.1}" y2="{y0}" stroke="#eee"/><text x="{px:.1}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
                y0 + 15.0,
                tick_label(t)
            );
        }
        let y_ticks = match self.log_y {
            // A loss spans less than a decade: log ticks where there are enough, else even ones.
            true => Some(log_ticks(y.lo, y.hi))
                .filter(|t| t.len() >= 3)
                .unwrap_or_else(|| linear_ticks(y.lo, y.hi)),
            false => linear_ticks(y.lo, y.hi),
        };
        for t in y_ticks {
            let py = y.px(t);
            let _ = write!(
                svg,
                r##"<line x1="{x0}" y1="{py:.1}" x2="{x1}" y2="{py:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end" fill="#444">{}</text>"##,
                x0 - 5.0,
                py + 4.0,
                tick_label(t)
            );
        }
        if self.zero_line && y.lo < 0.0 && y.hi > 0.0 {
            let py = y.px(0.0);
            let _ = write!(
                svg,
                r##"<line x1="{x0}" y1="{py:.1}" x2="{x1}" y2="{py:.1}" stroke="#555" stroke-dasharray="4 3"/>"##
            );
        }
        let _ = write!(
            svg,
            r##"<text x="{:.1}" y="{}" text-anchor="middle" fill="#222">{}{}</text><text transform="translate(14 {:.1}) rotate(-90)" text-anchor="middle" fill="#222">{}</text>"##,
            (x0 + x1) / 2.0,
            HEIGHT - 8.0,
            escape(&self.x_label),
            if self.log_x { " (log scale)" } else { "" },
            (y0 + y1) / 2.0,
            escape(&format!("{}{}", self.y_label, if self.log_y { " (log scale)" } else { "" }))
        );
    }

    /// One entry per series, its label wrapped at word boundaries (long group labels list the
    /// keys that tell groups apart).
    fn legend(&self, svg: &mut String) {
        let x = WIDTH - RIGHT + 12.0;
        let mut y = TOP + 12.0;
        for s in &self.series {
            let _ = write!(
                svg,
                r#"<line x1="{x}" y1="{y}" x2="{}" y2="{y}" stroke="{}" stroke-width="2.5"/><text x="{}" y="{}">"#,
                x + 18.0,
                s.color,
                x + 24.0,
                y + 4.0,
            );
            let lines = wrap(&s.label, LEGEND_CHARS);
            for (i, line) in lines.iter().enumerate() {
                let dy = if i == 0 { 0.0 } else { 13.0 };
                let _ = write!(svg, r#"<tspan x="{}" dy="{dy}">{}</tspan>"#, x + 24.0, escape(line));
            }
            svg.push_str("</text>");
            y += 18.0 + 13.0 * (lines.len() - 1) as f64;
            if y > HEIGHT - BOTTOM {
                break; // more groups than the space beside the plot holds
            }
        }
    }
}

/// Every k-th point and the last, so no path has more than `MAX_POINTS`.
fn thin(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let step = points.len().div_ceil(MAX_POINTS).max(1);
    let mut out: Vec<(f64, f64)> = points.iter().step_by(step).copied().collect();
    if let (Some(last), Some(kept)) = (points.last(), out.last()) {
        if last != kept {
            out.push(*last);
        }
    }
    out
}

fn path(points: &[(f64, f64)], x: &Scale, y: &Scale) -> String {
    let mut d = String::new();
    for (i, &(px, py)) in points.iter().filter(|p| x.shows(p.0) && p.1.is_finite()).enumerate() {
        let _ = write!(d, "{}{:.1},{:.1}", if i == 0 { "M" } else { "L" }, x.px(px), y.px(py));
    }
    d
}

fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::INFINITY, f64::min)
}

fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NEG_INFINITY, f64::max)
}

/// Ticks at 1, 2 or 5 × 10ᵏ, the step giving closest to six of them.
pub fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    if hi <= lo {
        return vec![lo];
    }
    let mag = 10f64.powf(((hi - lo) / 6.0).log10().floor());
    let ticks = |step: f64| -> Vec<f64> {
        let (first, last) = ((lo / step).ceil() as i64, (hi / step).floor() as i64);
        (first..=last).map(|i| i as f64 * step).collect()
    };
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| ticks(m * mag))
        .min_by_key(|t| (t.len() as i64 - 6).abs())
        .unwrap_or_default()
}

/// Powers of ten in range, with 2× and 5× (or every multiple) when that gives too few ticks.
pub fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (a, b) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let within = |mults: &[f64]| -> Vec<f64> {
        (a..=b)
            .flat_map(|e| mults.iter().map(move |m| m * 10f64.powi(e)))
            .filter(|t| *t >= lo * (1.0 - 1e-9) && *t <= hi * (1.0 + 1e-9))
            .collect()
    };
    let mut ticks = within(&[1.0]);
    if ticks.len() < 3 {
        ticks = within(&[1.0, 2.0, 5.0]);
    }
    if ticks.len() < 3 {
        ticks = within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]);
    }
    ticks
}

/// `1.5k`, `2M`, `3e10`, `0.25`, `6e-4`.
pub fn tick_label(v: f64) -> String {
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if a >= 1e9 {
        // FLOPs: powers of ten read better than thousands of millions.
        let s = format!("{v:.2e}");
        let (mantissa, exponent) = s.split_once('e').unwrap_or((&s, "0"));
        format!("{}e{exponent}", trim(mantissa.to_owned()))
    } else if a >= 1e6 {
        trim(format!("{:.2}", v / 1e6)) + "M"
    } else if a >= 1e4 {
        trim(format!("{:.2}", v / 1e3)) + "k"
    } else if a < 1e-3 {
        format!("{v:.0e}")
    } else {
        trim(format!("{v:.4}"))
    }
}

fn trim(s: String) -> String {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

/// Characters per line of a legend entry.
const LEGEND_CHARS: usize = 34;

/// `s` broken at spaces into lines of at most `width` characters (a longer word is cut).
fn wrap(s: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for word in s.split_whitespace() {
        match lines.last_mut() {
            Some(line) if line.chars().count() + 1 + word.chars().count() <= width => {
                line.push(' ');
                line.push_str(word);
            }
            _ => lines.push(word.chars().take(width).collect()),
        }
    }
    if lines.is_empty() {
        lines.push(String::new());
    }
    lines
}

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_round_numbers_inside_the_range() {
        assert_eq!(linear_ticks(0.0, 10.0), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        let t = linear_ticks(3.71, 4.02);
        assert_eq!(t.len(), 6);
        assert!((t[0] - 3.75).abs() < 1e-9 && (t[5] - 4.0).abs() < 1e-9, "{t:?}");
        assert_eq!(log_ticks(1_000.0, 1_000_000.0), vec![1e3, 1e4, 1e5, 1e6]);
        assert_eq!(log_ticks(1_000.0, 9_000.0), vec![1e3, 2e3, 5e3]);
        assert_eq!(log_ticks(10_240.0, 40_960.0), vec![2e4, 3e4, 4e4]);
        assert_eq!(tick_label(153_600.0), "153.6k");
        assert_eq!(tick_label(2_000_000.0), "2M");
        assert_eq!(tick_label(6e-4), "6e-4");
        assert_eq!(tick_label(5.25), "5.25");
        assert_eq!(tick_label(3e10), "3e10");
        assert_eq!(tick_label(2.5e11), "2.5e11");
    }

    #[test]
    fn a_figure_draws_every_series_with_its_points() {
        let fig = Figure {
            title: "loss & <things>".into(),
            x_label: "tokens".into(),
            y_label: "nats".into(),
            log_x: true,
            log_y: false,
            zero_line: false,
            x_range: None,
            series: vec![Series {
                label: "value_norm".into(),
                color: PALETTE[0].into(),
                line: (1..=2000).map(|i| (i as f64 * 100.0, 5.0 / (i as f64).sqrt())).collect(),
                band: vec![(100.0, 4.0, 6.0), (200_000.0, 0.1, 0.2)],
                raw: vec![vec![(100.0, 5.5), (200.0, 4.0)]],
                scatter: false,
            }],
        };
        let svg = fig.to_svg();
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>"));
        assert!(svg.contains("loss &amp; &lt;things&gt;"));
        assert!(
            svg.contains(r#"class="series" data-label="value_norm" data-points="501""#),
            "every 4th of 2000 points, and the last"
        );
        assert_eq!(svg.matches(r#"class="raw""#).count(), 1);
        assert_eq!(svg.matches(r#"class="band""#).count(), 1);
    }
}
