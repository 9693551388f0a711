//! A dense layer `y = x Wᵀ + b` as one op: the bias is the product's starting value, so there is
//! no separate bias pass, and the backward computes dW = dyᵀ x directly in W's (out, in) layout.
//! Written with candle ops, the layer's backward ends in a transpose whose gradient is a strided
//! view copied into place, and a broadcast add with its own backward.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::bias::column_sum;
use super::{f32s, fused, output_buffer, ROWS_PER_TASK};

/// x: (N, in), w: (out, in), b: (out,) → (N, out).
pub fn linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let all: Vec<&Tensor> = [x, w].into_iter().chain(b).collect();
    if fused(&all) {
        let (x, w) = (x.contiguous()?, w.contiguous()?);
        let ((rows, k), n) = (x.dims2()?, w.dim(0)?);
        candle_core::lmhost::flops::count_matmul(1, rows, n, k);
        return match b {
            Some(b) => x.apply_op3(&w, &b.contiguous()?, Linear),
            None => x.apply_op2(&w, Linear),
        };
    }
    composed(x, w, b)
}

/// The same with plain candle ops (CUDA, bf16). The bias enters as the product `1 bᵀ` of a
/// column of ones and the bias row, so that its gradient `1ᵀ dy` is a matrix product too,
/// accumulated in f32 and in a fixed order; as the backward of a broadcast add it would be a
/// sum over the rows, which candle accumulates in the tensor's dtype (bf16 keeps 8 bits) and,
/// on CUDA, with atomic adds in no fixed order.
fn composed(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Result<Tensor> {
    let y = x.matmul(&w.t()?)?;
    match b {
        Some(b) => {
            let ones = Tensor::ones((x.dim(0)?, 1), b.dtype(), b.device())?;
            y + ones.matmul(&b.reshape((1, ()))?)?
        }
        None => Ok(y),
    }
}

struct Linear;

/// y = x Wᵀ (+ b) on contiguous rows.
fn forward(
    op: &str,
    (x, lx): (&[f32], &Layout),
    (w, lw): (&[f32], &Layout),
    b: Option<&[f32]>,
) -> Result<(CpuStorage, Shape)> {
    let (n, k) = lx.shape().dims2()?;
    let (m, k2) = lw.shape().dims2()?;
    if k != k2 || b.is_some_and(|b| b.len() != m) {
        candle_core::bail!(
            "{op}: input {:?}, weight {:?}, bias {:?}",
            lx.shape().dims(),
            lw.shape().dims(),
            b.map(<[f32]>::len)
        );
    }
    // Written whole: by the bias rows, by the product (which overwrites when there is no bias), or
    // with zeros for an empty product.
    let mut y = output_buffer(n * m);
    if let Some(b) = b {
        y.par_chunks_mut(m * ROWS_PER_TASK)
            .for_each(|rows| rows.chunks_mut(m).for_each(|r| r.copy_from_slice(b)));
    } else if k == 0 {
        y.fill(0.0);
    }
    if k > 0 {
        // Safety: y is (n × m) row-major, x (n × k) row-major, and Wᵀ (k × m) is W (m × k)
        // read with row stride 1 and column stride k; all three are the slices above.
        unsafe {
            candle_core::lmhost::matmul::sgemm(
                (n, m, k),
                y.as_mut_ptr(),
                (m, 1),
                b.is_some(),
                x.as_ptr(),
                (k, 1),
                w.as_ptr(),
                (1, k),
                candle_core::utils::get_num_threads(),
            );
        }
    }
    Ok((CpuStorage::F32(y), Shape::from((n, m))))
}

/// dx = dy W and dW = dyᵀ x, both contiguous.
fn input_and_weight_grads(x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    Ok((dy.matmul(w)?, dy.t()?.matmul(x)?))
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "linear";
        forward(op, (f32s(s1, l1, op)?, l1), (f32s(s2, l2, op)?, l2), None)
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = input_and_weight_grads(x, w, dy)?;
        Ok((Some(dx), Some(dw)))
    }
}

impl CustomOp3 for Linear {
    fn name(&self) -> &'static str {
        "linear-bias"
    }

    #[allow(clippy::too_many_arguments)]
    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let op = "linear-bias";
        forward(op, (f32s(s1, l1, op)?, l1), (f32s(s2, l2, op)?, l2), Some(f32s(s3, l3, op)?))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let (dx, dw) = input_and_weight_grads(x, w, &dy)?;
        Ok((Some(dx), Some(dw), Some(column_sum(&dy, b.elem_count())?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{grads, max_diff, var};

    #[test]
    fn fused_matches_plain_candle_in_value_and_gradient() {
        for (n, k, m) in [(70, 33, 17), (1, 5, 3), (64, 128, 96)] {
            let x = var(&[n, k], 1, 2.0);
            let w = var(&[m, k], 2, 1.0);
            let b = var(&[m], 3, 1.0);
            let (out, g) = grads(&[&x, &w, &b], || linear(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())));
            let (out_ref, g_ref) =
                grads(&[&x, &w, &b], || composed(x.as_tensor(), w.as_tensor(), Some(b.as_tensor())));
            assert!(max_diff(&out, &out_ref) < 1e-4, "{n}×{k}×{m}: {}", max_diff(&out, &out_ref));
            for (i, (a, r)) in g.iter().zip(&g_ref).enumerate() {
                assert!(max_diff(a, r) < 1e-4, "{n}×{k}×{m}: gradient {i} differs by {}", max_diff(a, r));
                assert!(a.is_contiguous());
            }
            let (out, g) = grads(&[&x, &w], || linear(x.as_tensor(), w.as_tensor(), None));
            let (out_ref, g_ref) = grads(&[&x, &w], || composed(x.as_tensor(), w.as_tensor(), None));
            assert!(max_diff(&out, &out_ref) < 1e-4);
            assert!(max_diff(&g[1], &g_ref[1]) < 1e-4);
        }
    }
}
