//! exp and erf as branch-free polynomials, so the loops of the kernels that call them vectorise
//! (libm's `expf` and candle's `erf` are scalar calls: they were a tenth of a CPU step), lane
//! reductions, and [`simd_fn!`], which compiles such a loop for AVX-512 or AVX2+FMA when the CPU has them.

/// eˣ for f32 within 2 ulp over [−87.3, 88.3] (Cephes `expf`: x = k ln 2 + r, |r| ≤ ½ ln 2,
/// eʳ by a degree-7 polynomial, 2ᵏ through the exponent bits). Below −87.3 it returns about
/// 1e−38 instead of a subnormal or 0; callers subtract a row maximum first, so such terms are
/// negligible either way.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = x.clamp(-87.3, 88.3);
    // Round to nearest with the 1.5·2²³ trick (`round()` is a libm call that blocks vectorising);
    // the sum's low mantissa bits are then k itself, read without a float-to-int conversion.
    const SHIFT: f32 = 12_582_912.0;
    let shifted = x * LOG2E + SHIFT;
    let k = shifted - SHIFT;
    let two_k = f32::from_bits((((shifted.to_bits() as i32) - 0x4B40_0000 + 127) as u32) << 23);
    let r = x - k * LN2_HI - k * LN2_LO;
    // Plain multiply-adds: `mul_add` without hardware FMA is a slow libm call.
    let p = ((((1.987_569_1e-4_f32 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let er = p * r * r + r + 1.0;
    er * two_k
}

/// erf(x) for f32 with absolute error below 1e−6 (3.3e−7 measured against a series in f64), as
/// a rational function with no exponential: x·P(x²)/Q(x²) of degrees 13 and 8 on [−4, 4], ±1
/// outside (Eigen's `generic_fast_erf_float`, a minimax fit). Beyond ±3.9, erf is ±1 in f32.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let saturated = 1f32.copysign(x);
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = x2 * -2.726_142_3e-10 + 2.770_681_4e-8;
    p = x2 * p - 2.101_024e-6;
    p = x2 * p - 5.692_506_4e-5;
    p = x2 * p - 7.349_906_3e-4;
    p = x2 * p - 2.9546e-3;
    p = x2 * p - 1.609_603_3e-2;
    let mut q = x2 * -1.456_607_2e-5 - 2.133_740_6e-4;
    q = x2 * q - 1.682_827e-3;
    q = x2 * q - 7.373_329e-3;
    q = x2 * q - 1.426_474e-2;
    if x.abs() > 3.9 {
        saturated
    } else {
        x * p / q
    }
}

/// erf(x) given `e` = e^{−x²}, for a caller that needs that exponential anyway (GELU's
/// backward: the normal density at x√2 is the same exponential), with absolute error below
/// 1e−6: Abramowitz & Stegun 7.1.26, erf x = 1 − t·P(t)·e^{−x²} with t = 1/(1 + p|x|), odd in x.
#[inline(always)]
pub fn erf_with_exp(x: f32, e: f32) -> f32 {
    const P: f32 = 0.327_591_1;
    const A1: f32 = 0.254_829_6;
    const A2: f32 = -0.284_496_74;
    const A3: f32 = 1.421_413_7;
    const A4: f32 = -1.453_152_1;
    const A5: f32 = 1.061_405_4;
    let a = x.abs();
    let t = 1.0 / (P * a + 1.0);
    let poly = ((((A5 * t + A4) * t + A3) * t + A2) * t + A1) * t;
    let y = 1.0 - poly * e;
    y.copysign(x)
}

/// Lanes of a reduction: a float sum or max taken in order cannot vectorise, so reductions keep
/// this many partial results and combine them at the end (in a fixed order: deterministic).
const LANES: usize = 32;

/// Σ f(xᵢ).
#[inline(always)]
pub fn sum_map(xs: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest: f32 = chunks.remainder().iter().map(|&x| f(x)).sum();
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a += f(x);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Σ f(xᵢ, yᵢ) over the shorter of the two.
#[inline(always)]
pub fn sum_zip(xs: &[f32], ys: &[f32], f: impl Fn(f32, f32) -> f32) -> f32 {
    let n = xs.len().min(ys.len());
    let (xs, ys) = (&xs[..n], &ys[..n]);
    let mut acc = [0f32; LANES];
    let (xc, yc) = (xs.chunks_exact(LANES), ys.chunks_exact(LANES));
    let rest: f32 = xc.remainder().iter().zip(yc.remainder()).map(|(&x, &y)| f(x, y)).sum();
    for (x, y) in xc.zip(yc) {
        for i in 0..LANES {
            acc[i] += f(x[i], y[i]);
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// Σ xᵢ yᵢ over the shorter of the two.
#[inline(always)]
pub fn dot(xs: &[f32], ys: &[f32]) -> f32 {
    sum_zip(xs, ys, |x, y| x * y)
}

/// max xᵢ (−∞ for an empty slice; NaNs are ignored).
#[inline(always)]
pub fn max(xs: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; LANES];
    let chunks = xs.chunks_exact(LANES);
    let rest = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for (a, &x) in acc.iter_mut().zip(c) {
            *a = if x > *a { x } else { *a };
        }
    }
    acc.iter().fold(rest, |m, &x| m.max(x))
}

/// Whether this CPU runs the AVX2+FMA versions that [`simd_fn!`] compiles.
#[inline]
pub fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU runs the AVX-512 versions that [`simd_fn!`] compiles.
#[inline]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *HAS.get_or_init(|| has_avx2() && std::is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `simd_fn! { fn name(args) -> R { body } }` defines `name`, whose body runs compiled for
/// AVX-512 or AVX2+FMA when the CPU has them (the loops in it then vectorise 16 or 8 wide) and
/// for the build's baseline target otherwise. The body is inlined into a `#[target_feature]`
/// function, the one way to have it compiled for those features that does not depend on the
/// inliner's mood.
macro_rules! simd_fn {
    ($(#[$meta:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn generic($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx512f,avx2,fma")]
            unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                generic($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                generic($($arg),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::kernels::fastmath::has_avx512() {
                // Safety: the CPU has the features `avx512` was compiled for.
                return unsafe { avx512($($arg),*) };
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::kernels::fastmath::has_avx2() {
                // Safety: the CPU has the features `avx2` was compiled for.
                return unsafe { avx2($($arg),*) };
            }
            generic($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        let mut worst = 0f32;
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 1e-4;
            let (ours, libm) = (exp(x), x.exp());
            worst = worst.max(((ours - libm) / libm).abs());
        }
        assert!(worst < 2.5e-7, "relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert!(exp(-1e9) < 1e-37 && exp(f32::NEG_INFINITY) < 1e-37);
    }

    #[test]
    fn erf_is_within_1e6_of_candles() {
        let with_exp = |x: f32| erf_with_exp(x, exp(-x * x));
        for erf in [erf as fn(f32) -> f32, with_exp] {
            let mut worst = 0f32;
            for i in -6000..6000 {
                let x = i as f32 * 1e-3;
                worst = worst.max((erf(x) - candle_core::cpu::erf::erf_f32(x)).abs());
            }
            assert!(worst < 1e-6, "absolute error {worst}");
            assert!(erf(0.0).abs() < 2e-7);
            assert_eq!(erf(10.0), 1.0);
            assert_eq!(erf(-10.0), -1.0);
        }
    }

    #[test]
    fn reductions_agree_with_plain_loops() {
        let xs: Vec<f32> = (0..1003).map(|i| ((i * 37) % 101) as f32 * 0.1 - 3.0).collect();
        let plain: f64 = xs.iter().map(|&x| (x * x) as f64).sum();
        assert!((sum_map(&xs, |x| x * x) as f64 - plain).abs() < 1e-5 * plain);
        assert_eq!(max(&xs), xs.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)));
        assert_eq!(max(&xs[..5]), xs[..5].iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)));
        assert_eq!(max(&[]), f32::NEG_INFINITY);
    }

    simd_fn! {
        fn exp_plus_erf(xs: &[f32]) -> Vec<f32> {
            xs.iter().map(|&x| exp(x) + erf(x)).collect()
        }
    }

    #[test]
    fn simd_dispatch_gives_the_same_numbers() {
        let xs: Vec<f32> = (0..1000).map(|i| i as f32 * 0.01 - 5.0).collect();
        let plain: Vec<f32> = xs.iter().map(|&x| exp(x) + erf(x)).collect();
        for (a, b) in plain.iter().zip(&exp_plus_erf(&xs)) {
            assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{a} vs {b}");
        }
    }
}
