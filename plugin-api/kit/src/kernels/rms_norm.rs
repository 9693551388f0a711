//! RMSNorm over the last dimension with a gain (Zhang & Sennrich 2019, eq. 4), one pass forward
//! and one backward: `r = 1/√(mean(x²) + eps)`, `y = x · r ⊙ w`; backward, written out:
//! `dx = r · (g ⊙ w) − x · r³ · mean(g ⊙ w ⊙ x)`, `dw = Σ g ⊙ x · r`.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::fastmath::{simd_fn, sum_map, sum_zip};
use super::{f32s, fused, output_buffer, ROWS_PER_TASK};

/// x: (..., C), w: (C,) → (..., C), in x's dtype (computed in f32).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(&[x, w]) {
        return x.contiguous()?.apply_op2(&w.contiguous()?, RmsNormOp { eps: eps as f32 });
    }
    composed(x, w, eps)
}

/// The same with plain candle ops (CUDA, bf16): in f32, returned in x's dtype.
fn composed(x: &Tensor, w: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let normed = x.broadcast_div(&(x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?)?;
    normed.broadcast_mul(&w.to_dtype(DType::F32)?)?.to_dtype(dtype)
}

#[inline(always)]
fn rms(row: &[f32], eps: f32) -> f32 {
    1.0 / (sum_map(row, |x| x * x) / row.len() as f32 + eps).sqrt()
}

simd_fn! {
    /// Rows of C: y = x · r ⊙ w.
    fn forward_rows(y: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
        let c = w.len();
        for (y, row) in y.chunks_mut(c).zip(x.chunks(c)) {
            let r = rms(row, eps);
            for ((y, &x), &w) in y.iter_mut().zip(row).zip(w) {
                *y = x * r * w;
            }
        }
    }
}

simd_fn! {
    /// Rows of C: dx, and this block's sums into dw.
    fn backward_rows(dx: &mut [f32], dw: &mut [f32], x: &[f32], g: &[f32], w: &[f32], eps: f32) {
        let c = w.len();
        for ((dx, row), g) in dx.chunks_mut(c).zip(x.chunks(c)).zip(g.chunks(c)) {
            let r = rms(row, eps);
            // dx holds g ⊙ w until the last pass.
            for ((d, &g), &w) in dx.iter_mut().zip(g).zip(w) {
                *d = g * w;
            }
            let k = sum_zip(dx, row, |gw, x| gw * x) / c as f32 * r * r * r;
            for (((d, &x), &g), dw) in dx.iter_mut().zip(row).zip(g).zip(dw.iter_mut()) {
                *dw += g * x * r;
                *d = *d * r - x * k;
            }
        }
    }
}

#[derive(Clone, Copy)]
struct RmsNormOp {
    eps: f32,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let c = w.len();
        if l1.shape().dims().last() != Some(&c) {
            candle_core::bail!("rms norm: input {:?} with gain {c}", l1.shape().dims());
        }
        let mut out = output_buffer(x.len());
        out.par_chunks_mut(c * ROWS_PER_TASK)
            .zip(x.par_chunks(c * ROWS_PER_TASK))
            .for_each(|(y, x)| forward_rows(y, x, w, self.eps));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One op returns (N + 1, C): the rows of dx, then dw.
        let c = w.dim(0)?;
        let n = x.elem_count() / c;
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &RmsNormGrad { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        Ok((Some(dx), Some(packed.get(n)?)))
    }
}

struct RmsNormGrad {
    eps: f32,
}

impl candle_core::CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, w, g) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?, f32s(s3, l3, self.name())?);
        let c = w.len();
        let n = x.len() / c;
        let mut out = output_buffer((n + 1) * c);
        let (dx, dw) = out.split_at_mut(n * c);
        // Partial dw per task, summed in task order: independent of the thread count.
        let partials: Vec<Vec<f32>> = dx
            .par_chunks_mut(c * ROWS_PER_TASK)
            .zip(x.par_chunks(c * ROWS_PER_TASK).zip(g.par_chunks(c * ROWS_PER_TASK)))
            .map(|(dx, (x, g))| {
                let mut dw = vec![0f32; c];
                backward_rows(dx, &mut dw, x, g, w, self.eps);
                dw
            })
            .collect();
        dw.fill(0.0);
        for p in &partials {
            dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
        }
        Ok((CpuStorage::F32(out), Shape::from((n + 1, c))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{grads, max_diff, var};

    #[test]
    fn fused_matches_plain_candle_in_value_and_gradient() {
        let x = var(&[3, 37, 24], 1, 2.0);
        let w = var(&[24], 2, 1.0);
        let (out, g) = grads(&[&x, &w], || rms_norm(x.as_tensor(), w.as_tensor(), 1e-5));
        let (out_ref, g_ref) = grads(&[&x, &w], || composed(x.as_tensor(), w.as_tensor(), 1e-5));
        assert!(max_diff(&out, &out_ref) < 1e-5);
        for (name, (a, b)) in ["dx", "dw"].iter().zip(g.iter().zip(&g_ref)) {
            assert!(max_diff(a, b) < 1e-4, "{name} differs by {}", max_diff(a, b));
        }
    }
}
