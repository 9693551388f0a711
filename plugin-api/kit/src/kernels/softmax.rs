//! Causal softmax of scaled attention scores in one pass: the scale, the mask and the softmax of
//! `softmax(s · scale + mask)` fused, where query i of Tq sees keys j ≤ i + (Tk − Tq) (the
//! offset lets a query block attend to a cache of earlier keys). Masked weights are exactly 0.
//! Backward: `dx = scale · y ⊙ (g − Σ_j g_j y_j)`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, DType, Device, DeviceLocation, Layout, Result, Shape, Tensor, D,
};
use rayon::prelude::*;

use super::fastmath::{self, dot, exp, simd_fn, sum_map};
use super::{f32s, fused, ROWS_PER_TASK};

/// scores: (..., Tq, Tk) → attention weights of the same shape.
pub fn causal_softmax(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let (tq, tk) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    if tq > tk {
        candle_core::bail!("causal softmax: {tq} queries but only {tk} keys");
    }
    if fused(&[scores]) {
        return scores.contiguous()?.apply_op1(CausalSoftmax { scale: scale as f32 });
    }
    composed(scores, scale)
}

/// The same with plain candle ops (CUDA, bf16): the softmax in f32 (its statistics would lose
/// most of their digits in bf16), the mask built once per shape and device, not per call.
fn composed(scores: &Tensor, scale: f64) -> Result<Tensor> {
    let (tq, tk) = (scores.dim(D::Minus2)?, scores.dim(D::Minus1)?);
    let mask = causal_mask(tq, tk, scores.device())?;
    let probs =
        candle_nn::ops::softmax(&(scores.to_dtype(DType::F32)? * scale)?.broadcast_add(&mask)?, D::Minus1)?;
    probs.to_dtype(scores.dtype())
}

/// The additive causal mask (Tq, Tk) in f32 (0 where query i sees key j ≤ i + Tk − Tq, −∞
/// elsewhere), kept per (Tq, Tk, device) so that it is uploaded once.
pub fn causal_mask(tq: usize, tk: usize, device: &Device) -> Result<Tensor> {
    type Masks = HashMap<(usize, usize, DeviceLocation), Tensor>;
    static MASKS: OnceLock<Mutex<Masks>> = OnceLock::new();
    let key = (tq, tk, device.location());
    let mut masks = MASKS.get_or_init(Default::default).lock().expect("mask cache lock");
    if let Some(mask) = masks.get(&key) {
        return Ok(mask.clone());
    }
    let offset = tk - tq;
    let mask: Vec<f32> = (0..tq)
        .flat_map(|i| (0..tk).map(move |j| if j <= i + offset { 0.0 } else { f32::NEG_INFINITY }))
        .collect();
    let mask = Tensor::from_vec(mask, (tq, tk), device)?;
    masks.insert(key, mask.clone());
    Ok(mask)
}

simd_fn! {
    /// y = softmax(x · scale) over the visible part of one row.
    pub(super) fn softmax_row(y: &mut [f32], x: &[f32], scale: f32) {
        let max = fastmath::max(x) * scale;
        for (y, &v) in y.iter_mut().zip(x) {
            *y = exp(v * scale - max);
        }
        let inv = 1.0 / sum_map(y, |y| y);
        y.iter_mut().for_each(|y| *y *= inv);
    }
}

simd_fn! {
    /// d = scale · y ⊙ (g − y·g) over the visible part of one row.
    pub(super) fn softmax_grad_row(d: &mut [f32], y: &[f32], g: &[f32], scale: f32) {
        let dot = dot(y, g);
        for ((d, &y), &g) in d.iter_mut().zip(y).zip(g) {
            *d = scale * y * (g - dot);
        }
    }
}

#[derive(Clone, Copy)]
struct CausalSoftmax {
    scale: f32,
}

/// How many keys query row `r` of a (…, Tq, Tk) tensor sees.
fn visible(r: usize, tq: usize, tk: usize) -> usize {
    r % tq + (tk - tq) + 1
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = l.shape().dims();
        let (tq, tk) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let x = f32s(s, l, self.name())?;
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(tk * ROWS_PER_TASK).zip(x.par_chunks(tk * ROWS_PER_TASK)).enumerate().for_each(
            |(task, (out, x))| {
                for (i, (y, row)) in out.chunks_mut(tk).zip(x.chunks(tk)).enumerate() {
                    let n = visible(task * ROWS_PER_TASK + i, tq, tk);
                    softmax_row(&mut y[..n], &row[..n], self.scale);
                }
            },
        );
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &CausalSoftmaxGrad { scale: self.scale })?))
    }
}

struct CausalSoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for CausalSoftmaxGrad {
    fn name(&self) -> &'static str {
        "causal-softmax-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let dims = l1.shape().dims();
        let (tq, tk) = (dims[dims.len() - 2], dims[dims.len() - 1]);
        let y = f32s(s1, l1, self.name())?;
        let g = f32s(s2, l2, self.name())?;
        let mut out = vec![0f32; y.len()];
        out.par_chunks_mut(tk * ROWS_PER_TASK)
            .zip(y.par_chunks(tk * ROWS_PER_TASK).zip(g.par_chunks(tk * ROWS_PER_TASK)))
            .enumerate()
            .for_each(|(task, (out, (y, g)))| {
                for (i, ((d, y), g)) in out.chunks_mut(tk).zip(y.chunks(tk)).zip(g.chunks(tk)).enumerate() {
                    let n = visible(task * ROWS_PER_TASK + i, tq, tk);
                    softmax_grad_row(&mut d[..n], &y[..n], &g[..n], self.scale);
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{grads, max_diff, var};

    #[test]
    fn fused_matches_plain_candle_in_value_and_gradient() {
        for (tq, tk) in [(7, 7), (3, 7), (1, 5), (40, 40)] {
            let x = var(&[2, 3, tq, tk], 5, 3.0);
            let (out, g) = grads(&[&x], || causal_softmax(x.as_tensor(), 0.37));
            let (out_ref, g_ref) = grads(&[&x], || composed(x.as_tensor(), 0.37));
            assert!(max_diff(&out, &out_ref) < 1e-6, "{tq}x{tk}");
            assert!(max_diff(&g[0], &g_ref[0]) < 1e-6, "{tq}x{tk}: gradient");
        }
    }
}
