//! LayerNorm over the last dimension with gain and bias, one pass forward and one backward:
//! `x̂ = (x − μ)/√(σ² + eps)`, `y = x̂ ⊙ w + b`; backward (Ba et al. 2016, written out):
//! `dx = (g ⊙ w − mean(g ⊙ w) − x̂ · mean(g ⊙ w ⊙ x̂)) / √(σ² + eps)`, `dw = Σ g ⊙ x̂`, `db = Σ g`.

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::fastmath::{simd_fn, sum_map, sum_zip};
use super::{f32s, fused, output_buffer, ROWS_PER_TASK};

/// x: (..., C), w and b: (C,) → (..., C).
pub fn layer_norm(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(&[x, w, b]) {
        return x.contiguous()?.apply_op3(
            &w.contiguous()?,
            &b.contiguous()?,
            LayerNormOp { eps: eps as f32 },
        );
    }
    composed(x, w, b, eps)
}

/// The same with plain candle ops (CUDA, bf16): in f32 whatever the dtypes of x and the
/// weights, returned in x's dtype.
fn composed(x: &Tensor, w: &Tensor, b: &Tensor, eps: f64) -> Result<Tensor> {
    let dtype = x.dtype();
    let f32 = |t: &Tensor| t.to_dtype(DType::F32);
    let x = f32(x)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps)?.sqrt()?)?;
    normed.broadcast_mul(&f32(w)?)?.broadcast_add(&f32(b)?)?.to_dtype(dtype)
}

/// Mean and 1/√(σ² + eps) of a row (two passes for accuracy).
#[inline(always)]
fn moments(row: &[f32], eps: f32) -> (f32, f32) {
    let n = row.len() as f32;
    let mean = sum_map(row, |x| x) / n;
    let var = sum_map(row, |x| (x - mean) * (x - mean)) / n;
    (mean, 1.0 / (var + eps).sqrt())
}

simd_fn! {
    /// Rows of C: y = x̂ ⊙ w + b.
    fn forward_rows(y: &mut [f32], x: &[f32], w: &[f32], b: &[f32], eps: f32) {
        let c = w.len();
        for (y, row) in y.chunks_mut(c).zip(x.chunks(c)) {
            let (mean, rstd) = moments(row, eps);
            for (((y, &x), &w), &b) in y.iter_mut().zip(row).zip(w).zip(b) {
                *y = (x - mean) * rstd * w + b;
            }
        }
    }
}

simd_fn! {
    /// Rows of C: dx, and this block's sums into dw and db.
    fn backward_rows(dx: &mut [f32], dw: &mut [f32], db: &mut [f32], x: &[f32], g: &[f32], w: &[f32], eps: f32) {
        let c = w.len();
        for ((dx, row), g) in dx.chunks_mut(c).zip(x.chunks(c)).zip(g.chunks(c)) {
            let (mean, rstd) = moments(row, eps);
            // dx holds g ⊙ w until the last pass.
            for ((d, &g), &w) in dx.iter_mut().zip(g).zip(w) {
                *d = g * w;
            }
            let mean_gw = sum_map(dx, |gw| gw) / c as f32;
            let mean_gwx = sum_zip(dx, row, |gw, x| gw * (x - mean)) * rstd / c as f32;
            for ((((d, &x), &g), dw), db) in dx.iter_mut().zip(row).zip(g).zip(dw.iter_mut()).zip(db.iter_mut()) {
                let xhat = (x - mean) * rstd;
                *dw += g * xhat;
                *db += g;
                *d = (*d - mean_gw - xhat * mean_gwx) * rstd;
            }
        }
    }
}

#[derive(Clone, Copy)]
struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
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
        let x = f32s(s1, l1, self.name())?;
        let (w, b) = (f32s(s2, l2, self.name())?, f32s(s3, l3, self.name())?);
        let c = w.len();
        if b.len() != c || l1.shape().dims().last() != Some(&c) {
            candle_core::bail!(
                "layer norm: input {:?} with gain {} and bias {}",
                l1.shape().dims(),
                c,
                b.len()
            );
        }
        let mut out = output_buffer(x.len());
        out.par_chunks_mut(c * ROWS_PER_TASK)
            .zip(x.par_chunks(c * ROWS_PER_TASK))
            .for_each(|(y, x)| forward_rows(y, x, w, b, self.eps));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One op returns (N + 2, C): the rows of dx, then dw, then db.
        let c = w.dim(0)?;
        let n = x.elem_count() / c;
        let packed = x.apply_op3_no_bwd(w, &grad.contiguous()?, &LayerNormGrad { eps: self.eps })?;
        let dx = packed.narrow(0, 0, n)?.reshape(x.shape())?;
        Ok((Some(dx), Some(packed.get(n)?), Some(packed.get(n + 1)?)))
    }
}

struct LayerNormGrad {
    eps: f32,
}

impl CustomOp3 for LayerNormGrad {
    fn name(&self) -> &'static str {
        "layer-norm-grad"
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
        let x = f32s(s1, l1, self.name())?;
        let w = f32s(s2, l2, self.name())?;
        let g = f32s(s3, l3, self.name())?;
        let c = w.len();
        let n = x.len() / c;
        let mut out = output_buffer((n + 2) * c);
        let (dx, sums) = out.split_at_mut(n * c);
        // Each task returns its partial dw and db; summing them in task order keeps the result
        // independent of the thread count.
        let partials: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(c * ROWS_PER_TASK)
            .zip(x.par_chunks(c * ROWS_PER_TASK).zip(g.par_chunks(c * ROWS_PER_TASK)))
            .map(|(dx, (x, g))| {
                let (mut dw, mut db) = (vec![0f32; c], vec![0f32; c]);
                backward_rows(dx, &mut dw, &mut db, x, g, w, self.eps);
                (dw, db)
            })
            .collect();
        sums.fill(0.0);
        let (dw, db) = sums.split_at_mut(c);
        for (pw, pb) in &partials {
            dw.iter_mut().zip(pw).for_each(|(a, b)| *a += b);
            db.iter_mut().zip(pb).for_each(|(a, b)| *a += b);
        }
        Ok((CpuStorage::F32(out), Shape::from((n + 2, c))))
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
        let b = var(&[24], 3, 1.0);
        let (out, g) = grads(&[&x, &w, &b], || layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5));
        let (out_ref, g_ref) =
            grads(&[&x, &w, &b], || composed(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5));
        assert!(max_diff(&out, &out_ref) < 1e-5);
        for (name, (a, b)) in ["dx", "dw", "db"].iter().zip(g.iter().zip(&g_ref)) {
            assert!(max_diff(a, b) < 1e-4, "{name} differs by {}", max_diff(a, b));
        }
    }
}
