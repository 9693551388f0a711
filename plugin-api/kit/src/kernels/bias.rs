//! `y = x + b` for x (..., O) and a bias b (O,): the bias of every linear layer. candle's
//! backward of a broadcast add sums the gradient over the leading dimensions with a strided
//! reduction that costs more than the matmul beside it for the head's (N, V) output; here the
//! bias gradient is a column sum over contiguous rows.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::simd_fn;
use super::{f32s, fused, ROWS_PER_TASK};

pub fn add_bias(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    if fused(&[x, b]) {
        return x.contiguous()?.apply_op2(&b.contiguous()?, AddBias);
    }
    x.broadcast_add(b)
}

struct AddBias;

impl CustomOp2 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, b) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let o = b.len();
        if l1.shape().dims().last() != Some(&o) {
            candle_core::bail!("add-bias: input {:?} with a bias of {o}", l1.shape().dims());
        }
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(o * ROWS_PER_TASK).zip(x.par_chunks(o * ROWS_PER_TASK)).for_each(|(y, x)| {
            for (y, x) in y.chunks_mut(o).zip(x.chunks(o)) {
                for ((y, &x), &b) in y.iter_mut().zip(x).zip(b) {
                    *y = x + b;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _x: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let db = column_sum(grad, b.elem_count())?;
        Ok((Some(grad.clone()), Some(db)))
    }
}

/// g: (..., columns) → (columns,), summed over all leading dimensions (no gradient).
pub(super) fn column_sum(g: &Tensor, columns: usize) -> Result<Tensor> {
    g.contiguous()?.apply_op1_no_bwd(&ColumnSum { columns })
}

simd_fn! {
    /// acc += every row of `rows` (rows of acc.len() columns).
    fn add_rows(acc: &mut [f32], rows: &[f32]) {
        for row in rows.chunks(acc.len()) {
            acc.iter_mut().zip(row).for_each(|(a, g)| *a += g);
        }
    }
}

/// Sums a contiguous (..., columns) tensor over all but its last dimension.
struct ColumnSum {
    columns: usize,
}

impl CustomOp1 for ColumnSum {
    fn name(&self) -> &'static str {
        "column-sum"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let g = f32s(s, l, self.name())?;
        let o = self.columns;
        // Partial sums per task, added in task order: the same result on any thread count.
        let partials: Vec<Vec<f32>> = g
            .par_chunks(o * ROWS_PER_TASK * 4)
            .map(|rows| {
                let mut acc = vec![0f32; o];
                add_rows(&mut acc, rows);
                acc
            })
            .collect();
        let mut out = vec![0f32; o];
        for p in &partials {
            out.iter_mut().zip(p).for_each(|(a, p)| *a += p);
        }
        Ok((CpuStorage::F32(out), Shape::from(o)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{grads, max_diff, var};

    #[test]
    fn fused_matches_plain_candle_in_value_and_gradient() {
        let x = var(&[3, 70, 33], 1, 2.0);
        let b = var(&[33], 2, 1.0);
        let (out, g) = grads(&[&x, &b], || add_bias(x.as_tensor(), b.as_tensor()));
        let (out_ref, g_ref) = grads(&[&x, &b], || x.as_tensor().broadcast_add(b.as_tensor()));
        assert_eq!(max_diff(&out, &out_ref), 0.0);
        assert_eq!(max_diff(&g[0], &g_ref[0]), 0.0);
        assert!(max_diff(&g[1], &g_ref[1]) < 1e-4, "db differs by {}", max_diff(&g[1], &g_ref[1]));
    }
}
