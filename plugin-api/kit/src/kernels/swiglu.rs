//! The gate of a SwiGLU MLP in one pass (Shazeer 2020, "GLU Variants Improve Transformer",
//! eq. 6): `y = SiLU(a) ⊙ b` from the gate projection a and the up projection b, with
//! `SiLU(a) = a · σ(a)`; backward `da = g ⊙ b ⊙ σ(a)(1 + a(1 − σ(a)))`, `db = g ⊙ SiLU(a)`,
//! both from one pass.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::fastmath::{exp, simd_fn};
use super::{f32s, fused, output_buffer};

/// Elements per parallel task.
const CHUNK: usize = 16 * 1024;

/// gate, up: (..., H) each → SiLU(gate) ⊙ up.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if gate.dims() != up.dims() {
        candle_core::bail!("swiglu: gate {:?} and up {:?} differ", gate.dims(), up.dims());
    }
    if fused(&[gate, up]) {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu);
    }
    composed(gate, up)
}

/// The same with plain candle ops (CUDA, bf16).
fn composed(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

simd_fn! {
    /// y = a σ(a) · b.
    fn forward_chunk(y: &mut [f32], a: &[f32], b: &[f32]) {
        for ((y, &a), &b) in y.iter_mut().zip(a).zip(b) {
            *y = a / (1.0 + exp(-a)) * b;
        }
    }
}

simd_fn! {
    /// da and db from a, b and g.
    fn backward_chunk(da: &mut [f32], db: &mut [f32], a: &[f32], b: &[f32], g: &[f32]) {
        for ((((da, db), &a), &b), &g) in da.iter_mut().zip(db.iter_mut()).zip(a).zip(b).zip(g) {
            let s = 1.0 / (1.0 + exp(-a));
            *db = g * a * s;
            *da = g * b * s * (1.0 + a * (1.0 - s));
        }
    }
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (a, b) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?);
        let mut out = output_buffer(a.len());
        out.par_chunks_mut(CHUNK)
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
            .for_each(|(y, (a, b))| forward_chunk(y, a, b));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One op returns (2, ...): da, then db.
        let packed = a.apply_op3_no_bwd(b, &grad.contiguous()?, &SwiGluGrad)?;
        Ok((Some(packed.get(0)?), Some(packed.get(1)?)))
    }
}

struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "swiglu-grad"
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
        let (a, b, g) = (f32s(s1, l1, self.name())?, f32s(s2, l2, self.name())?, f32s(s3, l3, self.name())?);
        let n = a.len();
        let mut out = output_buffer(2 * n);
        let (da, db) = out.split_at_mut(n);
        da.par_chunks_mut(CHUNK)
            .zip(db.par_chunks_mut(CHUNK))
            .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)).zip(g.par_chunks(CHUNK)))
            .for_each(|((da, db), ((a, b), g))| backward_chunk(da, db, a, b, g));
        let mut dims = vec![2];
        dims.extend_from_slice(l1.shape().dims());
        Ok((CpuStorage::F32(out), Shape::from(dims)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{grads, max_diff, var};

    #[test]
    fn fused_matches_plain_candle_in_value_and_gradient() {
        let (a, b) = (var(&[3, 21, 40], 5, 4.0), var(&[3, 21, 40], 6, 2.0));
        let (out, g) = grads(&[&a, &b], || swiglu(a.as_tensor(), b.as_tensor()));
        let (out_ref, g_ref) = grads(&[&a, &b], || composed(a.as_tensor(), b.as_tensor()));
        assert_eq!(out.dims(), &[3, 21, 40]);
        assert!(max_diff(&out, &out_ref) < 1e-5, "values differ by {}", max_diff(&out, &out_ref));
        for (x, r) in g.iter().zip(&g_ref) {
            assert!(max_diff(x, r) < 1e-5, "gradient differs by {}", max_diff(x, r));
        }
    }
}
