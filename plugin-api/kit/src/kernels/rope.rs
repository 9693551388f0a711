//! Rotary position embeddings (Su et al. 2021, RoFormer, §3.4), with their backward. The head's
//! dimensions are paired as Hugging Face's Llama pairs them, `(i, i + D/2)` ("rotate half"; the
//! RoFormer's adjacent pairs under a fixed permutation of q and k), so a Llama checkpoint needs no
//! permutation either way. At position t, with `θ_i = t · base^(−2i/D)`:
//! `x'_i = x_i cos θ_i − x_{i+D/2} sin θ_i`, `x'_{i+D/2} = x_{i+D/2} cos θ_i + x_i sin θ_i`.
//! The backward is the inverse rotation. Angles and their cosines are f32, as transformers
//! computes them.
//!
//! candle-nn's own `rotary_emb::rope` has no backward: a model built on it never trains the
//! projections that feed q and k.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use candle_core::{CpuStorage, CustomOp1, DType, Device, DeviceLocation, Layout, Result, Shape, Tensor, D};
use rayon::prelude::*;

use super::{f32s, fused, output_buffer};

/// How the vectors to rotate lie in the tensor.
#[derive(Clone, Copy, PartialEq)]
enum Arrangement {
    /// (B, H, T, D): every vector rotated.
    Heads,
    /// (B, T, 3C): q, k and v of `n_head` heads side by side; q and k rotated, v copied.
    Qkv { n_head: usize },
}

/// x: (B, H, T, D), positions `offset..offset + T` → the same, rotated.
pub fn rope(x: &Tensor, offset: usize, base: f64) -> Result<Tensor> {
    let (_, _, t, d) = x.dims4()?;
    check(d)?;
    if fused(&[x]) {
        return x.contiguous()?.apply_op1(Rope {
            offset,
            base: base as f32,
            arrangement: Arrangement::Heads,
            backward: false,
        });
    }
    let (cos, sin) = tables(offset, t, d, base, x.device(), x.dtype())?; // (T, D/2)
    rotate(x, &cos, &sin)
}

/// qkv: (B, T, 3C), the fused q/k/v projection at positions `offset..offset + T` → the same with
/// q and k rotated, head by head.
pub fn rope_qkv(qkv: &Tensor, n_head: usize, offset: usize, base: f64) -> Result<Tensor> {
    let (b, t, c3) = qkv.dims3()?;
    let c = c3 / 3;
    if c3 % 3 != 0 || c % n_head != 0 {
        candle_core::bail!("rope: {c3} columns are not q, k and v of {n_head} heads");
    }
    let d = c / n_head;
    check(d)?;
    if fused(&[qkv]) {
        let arrangement = Arrangement::Qkv { n_head };
        return qkv.contiguous()?.apply_op1(Rope { offset, base: base as f32, arrangement, backward: false });
    }
    let (cos, sin) = tables(offset, t, d, base, qkv.device(), qkv.dtype())?;
    let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?); // (T, 1, D/2): every head
    let part = |i: usize| qkv.narrow(2, i * c, c)?.reshape((b, t, n_head, d));
    let q = rotate(&part(0)?, &cos, &sin)?.reshape((b, t, c))?;
    let k = rotate(&part(1)?, &cos, &sin)?.reshape((b, t, c))?;
    Tensor::cat(&[q, k, qkv.narrow(2, 2 * c, c)?], 2)
}

fn check(d: usize) -> Result<()> {
    if !d.is_multiple_of(2) {
        candle_core::bail!("rope needs an even head size, got {d}");
    }
    Ok(())
}

/// `(x1 cos − x2 sin, x2 cos + x1 sin)` of the halves of x's last dimension, cos and sin
/// broadcasting over what precedes it.
fn rotate(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let (x1, x2) = (x.narrow(D::Minus1, 0, half)?, x.narrow(D::Minus1, half, half)?);
    let first = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let second = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[first, second], D::Minus1)
}

/// cos θ and sin θ for positions `offset..offset + t` and the `d/2` frequencies, row-major.
fn angles(offset: usize, t: usize, d: usize, base: f32) -> (Vec<f32>, Vec<f32>) {
    let inv_freq: Vec<f32> = (0..d / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / d as f32)).collect();
    let (mut cos, mut sin) = (Vec::with_capacity(t * d / 2), Vec::with_capacity(t * d / 2));
    for p in offset..offset + t {
        for &f in &inv_freq {
            let angle = p as f32 * f;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

/// The tables as (T, D/2) tensors on `device`, kept per shape, offset and device (training asks
/// for the same ones every step).
fn tables(
    offset: usize,
    t: usize,
    d: usize,
    base: f64,
    device: &Device,
    dtype: DType,
) -> Result<(Tensor, Tensor)> {
    type Tables = HashMap<(usize, usize, usize, u64, DeviceLocation), (Tensor, Tensor)>;
    static TABLES: OnceLock<Mutex<Tables>> = OnceLock::new();
    let key = (offset, t, d, base.to_bits(), device.location());
    let mut tables = TABLES.get_or_init(Default::default).lock().expect("rope tables lock");
    let (cos, sin) = match tables.get(&key) {
        Some(found) => found.clone(),
        None => {
            let (cos, sin) = angles(offset, t, d, base as f32);
            let made =
                (Tensor::from_vec(cos, (t, d / 2), device)?, Tensor::from_vec(sin, (t, d / 2), device)?);
            if offset == 0 {
                tables.insert(key, made.clone()); // the decoding steps' offsets are not kept
            }
            made
        }
    };
    Ok((cos.to_dtype(dtype)?, sin.to_dtype(dtype)?))
}

#[derive(Clone, Copy)]
struct Rope {
    offset: usize,
    base: f32,
    arrangement: Arrangement,
    /// The inverse rotation (the backward of the forward one).
    backward: bool,
}

impl Rope {
    /// Rotates one vector of D at position `p` (`table` row `p − offset`) from `x` into `y`.
    fn rotate(&self, y: &mut [f32], x: &[f32], cos: &[f32], sin: &[f32]) {
        let half = x.len() / 2;
        let sign = if self.backward { -1.0 } else { 1.0 };
        for i in 0..half {
            let (a, b) = (x[i], x[i + half]);
            let (c, s) = (cos[i], sign * sin[i]);
            y[i] = a * c - b * s;
            y[i + half] = b * c + a * s;
        }
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = f32s(s, l, self.name())?;
        let mut out = output_buffer(x.len());
        match self.arrangement {
            Arrangement::Heads => {
                let (_, _, t, d) = l.shape().dims4()?;
                let (cos, sin) = angles(self.offset, t, d, self.base);
                // One (batch, head) per task: T vectors at positions offset..offset + T.
                out.par_chunks_mut(t * d).zip(x.par_chunks(t * d)).for_each(|(y, x)| {
                    for (p, (y, x)) in y.chunks_mut(d).zip(x.chunks(d)).enumerate() {
                        let row = p * d / 2..(p + 1) * d / 2;
                        self.rotate(y, x, &cos[row.clone()], &sin[row]);
                    }
                });
            }
            Arrangement::Qkv { n_head } => {
                let (_, t, c3) = l.shape().dims3()?;
                let c = c3 / 3;
                let d = c / n_head;
                let (cos, sin) = angles(self.offset, t, d, self.base);
                // One (batch, position) row of 3C per task.
                out.par_chunks_mut(c3).zip(x.par_chunks(c3)).enumerate().for_each(|(r, (y, x))| {
                    let p = r % t;
                    let row = p * d / 2..(p + 1) * d / 2;
                    let (qk_y, v_y) = y.split_at_mut(2 * c);
                    for (y, x) in qk_y.chunks_mut(d).zip(x[..2 * c].chunks(d)) {
                        self.rotate(y, x, &cos[row.clone()], &sin[row.clone()]);
                    }
                    v_y.copy_from_slice(&x[2 * c..]);
                });
            }
        }
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let inverse = Rope { backward: !self.backward, ..*self };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&inverse)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{grads, max_diff, var};

    #[test]
    fn fused_matches_plain_candle_in_value_and_gradient_in_both_arrangements() {
        let x = var(&[2, 3, 7, 8], 1, 1.0);
        let (out, g) = grads(&[&x], || rope(x.as_tensor(), 5, 10_000.0));
        let (cos, sin) = tables(5, 7, 8, 10_000.0, &Device::Cpu, DType::F32).unwrap();
        let (out_ref, g_ref) = grads(&[&x], || rotate(x.as_tensor(), &cos, &sin));
        assert!(max_diff(&out, &out_ref) < 1e-6 && max_diff(&g[0], &g_ref[0]) < 1e-6);
        let qkv = var(&[2, 7, 3 * 12], 2, 1.0);
        let (out, g) = grads(&[&qkv], || rope_qkv(qkv.as_tensor(), 3, 2, 10_000.0));
        let composed = |qkv: &Tensor| -> Result<Tensor> {
            let (cos, sin) = tables(2, 7, 4, 10_000.0, &Device::Cpu, DType::F32)?;
            let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
            let part = |i: usize| qkv.narrow(2, i * 12, 12)?.reshape((2, 7, 3, 4));
            let q = rotate(&part(0)?, &cos, &sin)?.reshape((2, 7, 12))?;
            let k = rotate(&part(1)?, &cos, &sin)?.reshape((2, 7, 12))?;
            Tensor::cat(&[q, k, qkv.narrow(2, 24, 12)?], 2)
        };
        let (out_ref, g_ref) = grads(&[&qkv], || composed(qkv.as_tensor()));
        assert!(max_diff(&out, &out_ref) < 1e-6, "{}", max_diff(&out, &out_ref));
        assert!(max_diff(&g[0], &g_ref[0]) < 1e-6, "{}", max_diff(&g[0], &g_ref[0]));
        // v is untouched, and a rotation keeps every pair's length.
        assert_eq!(
            max_diff(&out.narrow(2, 24, 12).unwrap(), &qkv.as_tensor().narrow(2, 24, 12).unwrap()),
            0.0
        );
    }

    #[test]
    fn a_query_and_a_key_meet_by_their_distance_alone() {
        // q_m · k_n depends on m − n only (RoFormer eq. 16): shift both and the score stays.
        let q = var(&[1, 1, 1, 8], 3, 1.0);
        let k = var(&[1, 1, 1, 8], 4, 1.0);
        let score = |m: usize, n: usize| -> f32 {
            let a = rope(q.as_tensor(), m, 10_000.0).unwrap();
            let b = rope(k.as_tensor(), n, 10_000.0).unwrap();
            (a * b).unwrap().sum_all().unwrap().to_scalar().unwrap()
        };
        assert!((score(7, 3) - score(14, 10)).abs() < 1e-5);
        assert!((score(7, 3) - score(3, 7)).abs() > 1e-4, "the order matters");
    }
}
