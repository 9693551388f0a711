//! Scaling laws: `L(C) = E + A·C^(−α)` fitted to final loss against training compute, the
//! compute a law needs to reach a loss, the effective compute multiplier of one law over another,
//! and bootstrap intervals over seeds (Kaplan et al. 2020; Hoffmann et al. 2022, §3.3).

use serde::Serialize;

/// `L(C) = E + A·C^(−α)`: E the irreducible loss, C training FLOPs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PowerLaw {
    pub e: f64,
    pub a: f64,
    pub alpha: f64,
}

/// The exponents the fit searches: any loss curve a ladder of language models draws lies
/// well inside (Kaplan et al. find α ≈ 0.05 in C, Hoffmann et al. ≈ 0.15–0.35 in N and D).
const ALPHA_RANGE: (f64, f64) = (0.005, 3.0);

impl PowerLaw {
    pub fn loss(&self, c: f64) -> f64 {
        self.e + self.a * c.powf(-self.alpha)
    }

    /// The compute at which the law reaches `loss`; `None` at or below its irreducible loss.
    pub fn compute_for(&self, loss: f64) -> Option<f64> {
        (loss > self.e && self.a > 0.0).then(|| (self.a / (loss - self.e)).powf(1.0 / self.alpha))
    }

    /// Fits the law to `(C, L)` points by least squares weighted by 1/L² (the residuals of
    /// log L to first order, as Hoffmann et al. fit in log space), with E ≥ 0 and A > 0: for each
    /// α the best E and A are a linear least-squares problem (variable projection), and α is
    /// found by a grid then golden-section search. `None` with fewer than three distinct C, or
    /// when the loss does not fall with compute.
    pub fn fit(points: &[(f64, f64)]) -> Option<PowerLaw> {
        let points: Vec<(f64, f64)> =
            points.iter().copied().filter(|(c, l)| c.is_finite() && *c > 0.0 && l.is_finite()).collect();
        let mut distinct: Vec<f64> = points.iter().map(|p| p.0).collect();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        if distinct.len() < 3 {
            return None;
        }
        // C spans decades: fit in units of its geometric mean, so C^(−α) stays near 1.
        let scale = (points.iter().map(|p| p.0.ln()).sum::<f64>() / points.len() as f64).exp();
        let scaled: Vec<(f64, f64)> = points.iter().map(|&(c, l)| (c / scale, l)).collect();
        let objective = |alpha: f64| linear_part(&scaled, alpha).map(|(_, _, r)| r).unwrap_or(f64::INFINITY);
        let (lo, hi) = (ALPHA_RANGE.0.ln(), ALPHA_RANGE.1.ln());
        const GRID: usize = 240;
        let at = |i: usize| (lo + (hi - lo) * i as f64 / GRID as f64).exp();
        let best = (0..=GRID).min_by(|&i, &j| objective(at(i)).total_cmp(&objective(at(j))))?;
        let (mut a, mut b) = (at(best.saturating_sub(1)), at((best + 1).min(GRID)));
        // Golden-section search between the grid's neighbours of its best point.
        let phi = (5f64.sqrt() - 1.0) / 2.0;
        for _ in 0..60 {
            let (x1, x2) = (b - phi * (b - a), a + phi * (b - a));
            if objective(x1) < objective(x2) {
                b = x2;
            } else {
                a = x1;
            }
        }
        let alpha = 0.5 * (a + b);
        let (e, a_scaled, _) = linear_part(&scaled, alpha)?;
        Some(PowerLaw { e, a: a_scaled * scale.powf(alpha), alpha })
    }

    /// The root mean square of log L − log L̂ over the points: how well the law fits.
    pub fn log_rms(&self, points: &[(f64, f64)]) -> f64 {
        let sq: f64 = points.iter().map(|&(c, l)| (l.ln() - self.loss(c).ln()).powi(2)).sum();
        (sq / points.len().max(1) as f64).sqrt()
    }
}

/// For a fixed α: the E ≥ 0 and A > 0 minimising Σ w (L − E − A·C^(−α))² with w = 1/L², and the
/// weighted residual; `None` when the best A is not positive.
fn linear_part(points: &[(f64, f64)], alpha: f64) -> Option<(f64, f64, f64)> {
    let (mut sw, mut su, mut sl, mut suu, mut sul) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(c, l) in points {
        let (w, u) = (1.0 / (l * l), c.powf(-alpha));
        sw += w;
        su += w * u;
        sl += w * l;
        suu += w * u * u;
        sul += w * u * l;
    }
    let det = sw * suu - su * su;
    let (mut e, mut a) = if det.abs() > 1e-300 {
        ((suu * sl - su * sul) / det, (sw * sul - su * sl) / det)
    } else {
        (f64::NAN, f64::NAN)
    };
    if e.is_nan() || e < 0.0 {
        // The unconstrained irreducible loss is negative (or undetermined): E = 0.
        e = 0.0;
        a = sul / suu;
    }
    if a.is_nan() || a <= 0.0 {
        return None;
    }
    let residual = points.iter().map(|&(c, l)| (l - e - a * c.powf(-alpha)).powi(2) / (l * l)).sum();
    Some((e, a, residual))
}

/// How much more compute the baseline needs to reach the loss the experiment reaches at
/// compute `c`: `C_baseline(L) / C_experiment(L)` at `L = experiment(c)` (> 1: the idea is worth
/// that many times its compute). Infinite when the baseline's law never reaches that loss.
pub fn compute_multiplier(baseline: &PowerLaw, experiment: &PowerLaw, c: f64) -> f64 {
    baseline.compute_for(experiment.loss(c)).map_or(f64::INFINITY, |needed| needed / c)
}

/// A generator for resampling, the same sequence every time (splitmix64), so a report depends
/// only on its runs.
pub struct Resampler(u64);

impl Resampler {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// An index in `0..n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n as u64) as usize
    }
}

/// The `q` quantile (0..=1) of `values` by linear interpolation; NaN when empty.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let pos = q * (v.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos.fract());
    if i + 1 < v.len() && frac > 0.0 && v[i] != v[i + 1] {
        v[i] + frac * (v[i + 1] - v[i])
    } else {
        v[i]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Points from `law` at 8 compute levels × 3 seeds, each loss off by a multiplicative
    /// noise of up to ±`noise` (deterministic).
    fn sample(law: &PowerLaw, noise: f64) -> Vec<(f64, f64)> {
        let mut r = Resampler::new(7);
        let mut out = Vec::new();
        for k in 0..8 {
            let c = 1e12 * 10f64.powf(k as f64 * 0.5);
            for _ in 0..3 {
                let u = r.index(2001) as f64 / 1000.0 - 1.0;
                out.push((c, law.loss(c) * (1.0 + noise * u)));
            }
        }
        out
    }

    #[test]
    fn the_fit_recovers_a_known_law() {
        let law = PowerLaw { e: 1.8, a: 2.0e4, alpha: 0.35 };
        let exact = PowerLaw::fit(&sample(&law, 0.0)).unwrap();
        assert!((exact.e - law.e).abs() < 1e-6, "{exact:?}");
        assert!((exact.alpha - law.alpha).abs() < 1e-6, "{exact:?}");
        assert!((exact.a / law.a - 1.0).abs() < 1e-4, "{exact:?}");
        // ±0.5 % noise: E within 0.05 nats, α within 0.03, and the fitted curve within 0.5 %.
        let noisy = PowerLaw::fit(&sample(&law, 0.005)).unwrap();
        assert!((noisy.e - law.e).abs() < 0.05, "{noisy:?}");
        assert!((noisy.alpha - law.alpha).abs() < 0.03, "{noisy:?}");
        for c in [1e12, 1e14, 1e15] {
            assert!((noisy.loss(c) / law.loss(c) - 1.0).abs() < 0.005, "{noisy:?} at {c}");
        }
        assert!(noisy.log_rms(&sample(&law, 0.005)) < 0.005);
    }

    #[test]
    fn no_fit_without_three_compute_levels_or_a_falling_loss() {
        assert!(PowerLaw::fit(&[(1e9, 3.0), (1e9, 3.1), (1e10, 2.5)]).is_none());
        assert!(PowerLaw::fit(&[(1e9, 2.0), (1e10, 2.5), (1e11, 3.0)]).is_none());
        // No floor in sight: E = 0, a pure power law.
        let pure = PowerLaw::fit(&[(1e9, 4.0), (1e10, 2.0), (1e11, 1.0)]).unwrap();
        assert!(pure.e.abs() < 1e-9, "{pure:?}");
        assert!((pure.alpha - 2f64.log10()).abs() < 1e-6, "{pure:?}");
    }

    #[test]
    fn the_multiplier_matches_its_closed_form() {
        // Same E and α, A scaled by k: the experiment is worth k^(−1/α) × compute everywhere.
        let base = PowerLaw { e: 2.0, a: 300.0, alpha: 0.3 };
        let k: f64 = 0.8;
        let exp = PowerLaw { a: base.a * k, ..base };
        for c in [1e10, 1e13, 1e16] {
            let m = compute_multiplier(&base, &exp, c);
            assert!((m / k.powf(-1.0 / 0.3) - 1.0).abs() < 1e-9, "{m} at {c}");
        }
        // Different floors: m(C) = (A_b / (E_e − E_b + A_e·C^(−α_e)))^(1/α_b) / C.
        let exp = PowerLaw { e: 2.05, a: 200.0, alpha: 0.25 };
        for c in [1e8_f64, 1e10] {
            let closed = (base.a / (exp.e - base.e + exp.a * c.powf(-exp.alpha))).powf(1.0 / base.alpha) / c;
            assert!((compute_multiplier(&base, &exp, c) / closed - 1.0).abs() < 1e-9);
        }
        // Below the baseline's floor no amount of its compute suffices.
        let better_floor = PowerLaw { e: 1.5, ..base };
        assert!(compute_multiplier(&base, &better_floor, 1e30).is_infinite());
    }

    #[test]
    fn quantiles_interpolate() {
        assert_eq!(quantile(&[3.0, 1.0, 2.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0], 0.25), 1.25);
        assert!(quantile(&[], 0.5).is_nan());
        let mut r = Resampler::new(1);
        assert!((0..100).map(|_| r.index(3)).all(|i| i < 3));
    }
}
