//! Exact (erf) GELU, `y = x · Φ(x) = ½ x (1 + erf(x/√2))` (Hendrycks & Gimpel 2016), with its
//! derivative `Φ(x) + x φ(x)` in one backward pass (candle's own backward takes several).

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::{erf, erf_with_exp, exp, simd_fn};
use super::{f32s, fused, output_buffer};

/// Elements per parallel task.
const CHUNK: usize = 4096;

pub fn gelu_erf(x: &Tensor) -> Result<Tensor> {
    if fused(&[x]) {
        return x.contiguous()?.apply_op1(GeluErf);
    }
    x.gelu_erf()
}

simd_fn! {
    /// y = ½ x (1 + erf(x/√2)).
    fn forward(y: &mut [f32], x: &[f32]) {
        for (y, &x) in y.iter_mut().zip(x) {
            *y = 0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2));
        }
    }
}

simd_fn! {
    /// d = g · (Φ(x) + x φ(x)).
    fn backward(d: &mut [f32], x: &[f32], g: &[f32]) {
        // 1/√(2π)
        const INV_SQRT_2PI: f32 = 0.398_942_3;
        for ((d, &x), &g) in d.iter_mut().zip(x).zip(g) {
            // e^{−x²/2}: the density's exponential and the one inside erf(x/√2).
            let e = exp(-0.5 * x * x);
            let cdf = 0.5 * (1.0 + erf_with_exp(x * std::f32::consts::FRAC_1_SQRT_2, e));
            let pdf = INV_SQRT_2PI * e;
            *d = g * (cdf + x * pdf);
        }
    }
}

struct GeluErf;

impl CustomOp1 for GeluErf {
    fn name(&self) -> &'static str {
        "gelu-erf"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let mut out = output_buffer(x.len());
        out.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| forward(y, x));
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &GeluErfGrad)?))
    }
}

struct GeluErfGrad;

impl CustomOp2 for GeluErfGrad {
    fn name(&self) -> &'static str {
        "gelu-erf-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s1, l1, self.name())?;
        let g = f32s(s2, l2, self.name())?;
        let mut out = output_buffer(x.len());
        out.par_chunks_mut(CHUNK)
            .zip(x.par_chunks(CHUNK).zip(g.par_chunks(CHUNK)))
            .for_each(|(d, (x, g))| backward(d, x, g));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{grads, max_diff, var};

    #[test]
    fn fused_matches_plain_candle_in_value_and_gradient() {
        let x = var(&[5000], 4, 5.0);
        let (out, g) = grads(&[&x], || gelu_erf(x.as_tensor()));
        let (out_ref, g_ref) = grads(&[&x], || x.as_tensor().gelu_erf());
        assert!(max_diff(&out, &out_ref) < 1e-6, "values differ by {}", max_diff(&out, &out_ref));
        assert!(max_diff(&g[0], &g_ref[0]) < 1e-5, "gradient differs by {}", max_diff(&g[0], &g_ref[0]));
    }
}
