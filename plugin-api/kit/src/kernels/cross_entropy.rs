//! Softmax cross-entropy and accuracy in one pass over the logits, the largest tensor of a
//! small GPT step (N × V). Backward: `dlogits = g · (softmax(x) − onehot(t))`, in one more pass.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::fastmath::{self, exp, simd_fn, sum_map};
use super::{f32s, fused, output_buffer, u32s, ROWS_PER_TASK};

/// Summed cross-entropy in nats and the count of argmax hits.
/// logits: (N, V), targets: (N,) u32 → two scalars (the loss keeps its gradient graph).
pub fn cross_entropy_sum(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    if fused(&[logits]) {
        let op = SoftmaxCrossEntropy { lse: Mutex::new(None) };
        let per_row = logits.contiguous()?.apply_op2(&targets.contiguous()?, op)?; // (N, 2)
        let loss_sum = per_row.narrow(1, 0, 1)?.sum_all()?;
        let correct = per_row.narrow(1, 1, 1)?.sum_all()?;
        return Ok((loss_sum, correct));
    }
    composed(logits, targets)
}

/// The same with plain candle ops (CUDA, bf16).
fn composed(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let logits = logits.to_dtype(DType::F32)?;
    let log_probs = candle_nn::ops::log_softmax(&logits, D::Minus1)?;
    let loss_sum = log_probs.gather(&targets.unsqueeze(1)?, 1)?.sum_all()?.neg()?;
    let correct = logits.argmax(D::Minus1)?.eq(targets)?.to_dtype(DType::F32)?.sum_all()?;
    Ok((loss_sum, correct))
}

simd_fn! {
    /// Log-sum-exp of a row, and the index of its (first) maximum.
    fn row_stats(row: &[f32]) -> (f32, usize) {
        let max = fastmath::max(row);
        let arg = row.iter().position(|&x| x == max).unwrap_or(0);
        (max + sum_map(row, |x| exp(x - max)).ln(), arg)
    }
}

simd_fn! {
    /// d = g · exp(x − lse): softmax scaled by the row's output gradient.
    fn scaled_softmax(d: &mut [f32], row: &[f32], lse: f32, g: f32) {
        for (d, &x) in d.iter_mut().zip(row) {
            *d = g * exp(x - lse);
        }
    }
}

fn check_targets(targets: &[u32], n: usize, v: usize) -> Result<()> {
    if targets.len() != n {
        candle_core::bail!("cross-entropy: {} targets for {n} rows", targets.len());
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= v) {
        candle_core::bail!("cross-entropy: target id {t} is outside the vocabulary of {v}");
    }
    Ok(())
}

/// Per row: [logsumexp(x) − x[t], argmax(x) == t].
struct SoftmaxCrossEntropy {
    /// Each row's log-sum-exp, kept for the backward (which otherwise makes two more passes).
    lse: Mutex<Option<Vec<f32>>>,
}

impl CustomOp2 for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        "softmax-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (n, v) = l1.shape().dims2()?;
        let x = f32s(s1, l1, self.name())?;
        let t = u32s(s2, l2, self.name())?;
        check_targets(t, n, v)?;
        let mut out = output_buffer(n * 2);
        let mut lse = output_buffer(n);
        out.par_chunks_mut(2 * ROWS_PER_TASK)
            .zip(lse.par_chunks_mut(ROWS_PER_TASK))
            .zip(x.par_chunks(v * ROWS_PER_TASK).zip(t.par_chunks(ROWS_PER_TASK)))
            .for_each(|((out, lse), (x, t))| {
                for (((o, lse), row), &t) in out.chunks_mut(2).zip(lse).zip(x.chunks(v)).zip(t) {
                    let arg;
                    (*lse, arg) = row_stats(row);
                    o[0] = *lse - row[t as usize];
                    o[1] = f32::from(u8::from(arg == t as usize));
                }
            });
        *self.lse.lock().expect("log-sum-exp lock") = Some(lse);
        Ok((CpuStorage::F32(out), Shape::from((n, 2))))
    }

    fn bwd(
        &self,
        logits: &Tensor,
        targets: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.narrow(1, 0, 1)?.contiguous()?; // the hit column carries no gradient
        let op = CrossEntropyGrad { lse: self.lse.lock().expect("log-sum-exp lock").take() };
        Ok((Some(logits.apply_op3_no_bwd(targets, &g, &op)?), None))
    }
}

/// `g_i · (softmax(x_i) − onehot(t_i))`, with the forward's log-sum-exps when it kept them.
struct CrossEntropyGrad {
    lse: Option<Vec<f32>>,
}

impl CustomOp3 for CrossEntropyGrad {
    fn name(&self) -> &'static str {
        "softmax-cross-entropy-grad"
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
        let (n, v) = l1.shape().dims2()?;
        let x = f32s(s1, l1, self.name())?;
        let t = u32s(s2, l2, self.name())?;
        let g = f32s(s3, l3, self.name())?;
        check_targets(t, n, v)?;
        let kept = self.lse.as_deref().filter(|lse| lse.len() == n);
        let mut out = output_buffer(n * v);
        out.par_chunks_mut(v * ROWS_PER_TASK)
            .zip(x.par_chunks(v * ROWS_PER_TASK))
            .zip(t.par_chunks(ROWS_PER_TASK).zip(g.par_chunks(ROWS_PER_TASK)))
            .enumerate()
            .for_each(|(task, ((out, x), (t, g)))| {
                let rows = out.chunks_mut(v).zip(x.chunks(v)).zip(t).zip(g);
                for (i, (((d, row), &t), &g)) in rows.enumerate() {
                    let lse = match kept {
                        Some(lse) => lse[task * ROWS_PER_TASK + i],
                        None => row_stats(row).0,
                    };
                    scaled_softmax(d, row, lse, g);
                    d[t as usize] -= g;
                }
            });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{max_diff, var};
    use candle_core::Device;

    #[test]
    fn fused_matches_plain_candle_in_value_and_gradient() {
        let logits = var(&[37, 50], 1, 4.0);
        let targets = Tensor::from_vec((0..37u32).map(|i| i * 7 % 50).collect(), 37, &Device::Cpu).unwrap();
        let (loss, hits) = cross_entropy_sum(logits.as_tensor(), &targets).unwrap();
        let (loss_ref, hits_ref) = composed(logits.as_tensor(), &targets).unwrap();
        assert!(max_diff(&loss, &loss_ref) < 1e-3, "{loss} vs {loss_ref}");
        assert_eq!(hits.to_scalar::<f32>().unwrap(), hits_ref.to_scalar::<f32>().unwrap());
        let g = (loss * 0.5).unwrap().backward().unwrap();
        let g_ref = (loss_ref * 0.5).unwrap().backward().unwrap();
        let (a, b) = (g.get(logits.as_tensor()).unwrap(), g_ref.get(logits.as_tensor()).unwrap());
        assert!(max_diff(a, b) < 1e-6, "gradient differs by {}", max_diff(a, b));
    }

    #[test]
    fn an_out_of_vocabulary_target_is_an_error() {
        let logits = var(&[2, 4], 1, 1.0);
        let targets = Tensor::new(&[1u32, 4], &Device::Cpu).unwrap();
        assert!(cross_entropy_sum(logits.as_tensor(), &targets).is_err());
    }
}
