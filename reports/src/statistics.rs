//! The numbers behind a comparison: means and spreads across seeds, Welch's and the paired
//! t-test with confidence intervals, and the de-biased EMA used for smoothing. Checked against
//! SciPy in `tests/student_t.rs` (the generator script sits beside its golden file).

/// Mean of the values (NaN when empty).
pub fn mean(xs: &[f64]) -> f64 {
    xs.iter().sum::<f64>() / xs.len() as f64
}

/// Sample standard deviation (n − 1 in the denominator); 0 for a single value.
pub fn std(xs: &[f64]) -> f64 {
    if xs.len() < 2 {
        return 0.0;
    }
    let m = mean(xs);
    (xs.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt()
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7, n = 9; Press et al., Numerical Recipes §6.1).
fn ln_gamma(x: f64) -> f64 {
    const G: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1−x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let series = G[1..].iter().enumerate().fold(G[0], |acc, (i, g)| acc + g / (x + i as f64 + 1.0));
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + series.ln()
}

/// The regularised incomplete beta function I_x(a, b) by its continued fraction (modified
/// Lentz; Numerical Recipes §6.4).
fn incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - incomplete_beta(1.0 - x, b, a);
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp() / a;
    let tiny = 1e-300;
    let (mut c, mut d) = (1.0, 1.0 - (a + b) * x / (a + 1.0));
    d = 1.0 / if d.abs() < tiny { tiny } else { d };
    let mut f = d;
    for m in 1..300 {
        let m = m as f64;
        for numerator in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + numerator * d;
            d = 1.0 / if d.abs() < tiny { tiny } else { d };
            c = 1.0 + numerator / c;
            if c.abs() < tiny {
                c = tiny;
            }
            f *= c * d;
        }
        if (c * d - 1.0).abs() < 1e-15 {
            break;
        }
    }
    front * f
}

/// P(T ≤ t) for Student's t with `df` degrees of freedom.
pub fn student_t_cdf(t: f64, df: f64) -> f64 {
    let tail = 0.5 * incomplete_beta(df / (df + t * t), df / 2.0, 0.5);
    if t >= 0.0 {
        1.0 - tail
    } else {
        tail
    }
}

/// The t with P(T ≤ t) = p, by bisection on the CDF.
pub fn student_t_quantile(p: f64, df: f64) -> f64 {
    let (mut lo, mut hi) = (-1e4, 1e4);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if student_t_cdf(mid, df) < p {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// The outcome of a two-sample comparison of `a − b`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TTest {
    /// Mean difference a − b.
    pub difference: f64,
    /// 95 % confidence interval of the difference.
    pub ci95: (f64, f64),
    pub t: f64,
    pub df: f64,
    /// Two-sided p-value.
    pub p: f64,
}

fn finish(difference: f64, se: f64, df: f64) -> TTest {
    let t = difference / se;
    let half = student_t_quantile(0.975, df) * se;
    TTest {
        difference,
        ci95: (difference - half, difference + half),
        t,
        df,
        p: 2.0 * (1.0 - student_t_cdf(t.abs(), df)),
    }
}

/// Welch's unequal-variance t-test; `None` when a side has fewer than two values or neither
/// side varies.
pub fn welch(a: &[f64], b: &[f64]) -> Option<TTest> {
    if a.len() < 2 || b.len() < 2 {
        return None;
    }
    let (va, vb) = (std(a).powi(2) / a.len() as f64, std(b).powi(2) / b.len() as f64);
    if va + vb == 0.0 {
        return None;
    }
    // Welch–Satterthwaite degrees of freedom.
    let df = (va + vb).powi(2) / (va.powi(2) / (a.len() - 1) as f64 + vb.powi(2) / (b.len() - 1) as f64);
    Some(finish(mean(a) - mean(b), (va + vb).sqrt(), df))
}

/// The paired t-test on `a[i] − b[i]` (runs matched by seed); `None` below two pairs or when the
/// differences do not vary.
pub fn paired(a: &[f64], b: &[f64]) -> Option<TTest> {
    if a.len() != b.len() || a.len() < 2 {
        return None;
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let se = std(&d) / (d.len() as f64).sqrt();
    if se == 0.0 {
        return None;
    }
    Some(finish(mean(&d), se, (d.len() - 1) as f64))
}

/// Exponential moving average with the start-up bias removed (Adam's correction, as
/// TensorBoard smooths): `s_t = β s_{t−1} + (1 − β) x_t`, reported as `s_t / (1 − βᵗ)`.
pub fn ema_debiased(xs: &[f64], beta: f64) -> Vec<f64> {
    let mut s = 0.0;
    let mut weight = 1.0;
    xs.iter()
        .map(|&x| {
            s = beta * s + (1.0 - beta) * x;
            weight *= beta;
            if weight < 1.0 {
                s / (1.0 - weight)
            } else {
                x
            }
        })
        .collect()
}

/// Linear interpolation of a curve sorted by x; `None` outside its range.
pub fn interpolate(curve: &[(f64, f64)], x: f64) -> Option<f64> {
    let i = curve.partition_point(|p| p.0 < x);
    match (curve.get(i.wrapping_sub(1)), curve.get(i)) {
        (_, Some(&(x1, y1))) if x1 == x => Some(y1),
        (Some(&(x0, y0)), Some(&(x1, y1))) => Some(y0 + (y1 - y0) * (x - x0) / (x1 - x0)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_and_smoothing() {
        assert_eq!(mean(&[1.0, 2.0, 6.0]), 3.0);
        assert!((std(&[1.0, 2.0, 6.0]) - 7f64.sqrt()).abs() < 1e-12);
        assert_eq!(std(&[5.0]), 0.0);
        // De-biased: a constant series stays constant from the first point on.
        assert!(ema_debiased(&[4.0; 5], 0.9).iter().all(|&s| (s - 4.0).abs() < 1e-12));
        let s = ema_debiased(&[0.0, 10.0], 0.5);
        assert!((s[1] - 10.0 * 0.5 / 0.75).abs() < 1e-12);
        assert_eq!(ema_debiased(&[1.0, 2.0], 0.0), vec![1.0, 2.0]);
    }

    #[test]
    fn interpolation_stays_inside_the_curve() {
        let c = [(1.0, 10.0), (3.0, 30.0)];
        assert_eq!(interpolate(&c, 2.0), Some(20.0));
        assert_eq!(interpolate(&c, 1.0), Some(10.0));
        assert_eq!(interpolate(&c, 3.0), Some(30.0));
        assert_eq!(interpolate(&c, 0.5), None);
        assert_eq!(interpolate(&c, 4.0), None);
    }

    #[test]
    fn too_few_or_identical_values_give_no_test() {
        assert!(welch(&[1.0], &[2.0, 3.0]).is_none());
        assert!(welch(&[1.0, 1.0], &[2.0, 2.0]).is_none());
        assert!(paired(&[1.0, 2.0], &[0.0, 1.0]).is_none());
    }
}
