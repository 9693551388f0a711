//! Causal self-attention from the fused q/k/v projection to the merged heads in one op:
//! `y = merge(softmax(q kᵀ · scale + mask) v)` with q, k, v read in place from `qkv` (B, T, 3C)
//! and y written as (B, T, C). The plain path splits heads (three copies), transposes k, and
//! merges heads (another copy); its backward zero-pads each of the three slices of `qkv` to full
//! size. Here every matrix product is one `gemm` call on strided views, one (batch, head) pair per
//! task, and the attention weights are kept from the forward for the backward.
//!
//! Backward (P the weights, dY the output gradient, per head): dV = Pᵀ dY, dP = dY Vᵀ,
//! dS = scale · P ⊙ (dP − rowsum(P ⊙ dP)), dQ = dS K, dK = dSᵀ Q.
//!
//! The mask makes P and dS lower triangular, so each product runs over blocks of
//! [`BLOCK`] query rows (or key columns) and only the keys (queries) the block can see: at
//! T = 128 that is 3/4 of the full products' arithmetic, at T = 256 5/8.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use gemm::Parallelism;
use rayon::prelude::*;

use super::fastmath::{self, dot, exp, simd_fn, sum_map};
use super::{f32s, fused, output_buffer};

/// qkv: (B, T, 3C), the q, k and v projections side by side, each with `n_head` heads of C/H
/// columns → (B, T, C). Falls back to plain candle ops off the CPU or for other dtypes.
pub fn causal_self_attention(qkv: &Tensor, n_head: usize, scale: f64) -> Result<Tensor> {
    let (_, _, c3) = qkv.dims3()?;
    if c3 % 3 != 0 || (c3 / 3) % n_head != 0 {
        candle_core::bail!("attention: {c3} columns are not q, k and v of {n_head} heads");
    }
    if fused(&[qkv]) {
        let op = FusedAttention { n_head, scale: scale as f32, weights: Mutex::new(None) };
        return qkv.contiguous()?.apply_op1(op);
    }
    composed(qkv, n_head, scale)
}

/// The same with plain candle ops (CUDA, bf16). The scores and their softmax are f32 whatever
/// q and k are (in bf16 the scores keep 8 bits, and a tiny model's validation loss ended 0.05
/// nats higher than in f32 for it); the weights meet v in v's dtype.
fn composed(qkv: &Tensor, n_head: usize, scale: f64) -> Result<Tensor> {
    let c = qkv.dim(2)? / 3;
    let heads = |i: usize| crate::nn::split_heads(&qkv.narrow(2, i * c, c)?, n_head);
    let (q, k, v) = (heads(0)?, heads(1)?, heads(2)?);
    let f = candle_core::DType::F32;
    let scores = q.to_dtype(f)?.matmul(&k.to_dtype(f)?.t()?)?;
    crate::nn::merge_heads(&super::causal_softmax(&scores, scale)?.to_dtype(v.dtype())?.matmul(&v)?)
}

/// Rows of P per product: the causal mask leaves a block of queries only the keys up to its last.
const BLOCK: usize = 64;

/// [start, end) of each block of `BLOCK` positions out of `t`.
fn blocks(t: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..t).step_by(BLOCK).map(move |start| (start, t.min(start + BLOCK)))
}

/// Dimensions of one call.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    t: usize,
    c: usize,
    h: usize,
    d: usize,
}

impl Dims {
    fn of(l: &Layout, n_head: usize) -> Result<Self> {
        let (b, t, c3) = l.shape().dims3()?;
        let c = c3 / 3;
        Ok(Self { b, t, c, h: n_head, d: c / n_head })
    }

    /// Offset in `qkv` of head `h`'s block `part` (0 q, 1 k, 2 v) at time 0 of batch row `b`.
    fn qkv_offset(&self, item: usize, part: usize) -> usize {
        let (b, h) = (item / self.h, item % self.h);
        b * self.t * 3 * self.c + part * self.c + h * self.d
    }

    /// Offset in y (B, T, C) of head `h` at time 0 of batch row `b`.
    fn y_offset(&self, item: usize) -> usize {
        let (b, h) = (item / self.h, item % self.h);
        b * self.t * self.c + h * self.d
    }
}

/// A pointer tasks write through, each to its own head's columns only.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// Safety: every task writes a disjoint set of elements (its own (batch, head) columns).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer `offset` elements on (a method, so closures capture the whole `Shared`).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// dst (m × n, strides rs/cs) = lhs (m × k) · rhs (k × n), single-threaded (tasks are parallel).
/// Safety: the pointers and strides must describe valid, non-overlapping matrices.
#[allow(clippy::too_many_arguments)]
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    (dst_rs, dst_cs): (usize, usize),
    lhs: *const f32,
    (lhs_rs, lhs_cs): (usize, usize),
    rhs: *const f32,
    (rhs_rs, rhs_cs): (usize, usize),
) {
    gemm::gemm(
        m,
        n,
        k,
        dst,
        dst_cs as isize,
        dst_rs as isize,
        false,
        lhs,
        lhs_cs as isize,
        lhs_rs as isize,
        rhs,
        rhs_cs as isize,
        rhs_rs as isize,
        0.0,
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    )
}

/// The causal attention weights of one (batch, head): P = softmax(scale · Q Kᵀ + mask), (T × T)
/// row-major, masked entries 0.
fn weights(qkv: &[f32], dims: Dims, item: usize, scale: f32, p: &mut [f32]) {
    let (t, d, row) = (dims.t, dims.d, 3 * dims.c);
    let (q, k) = (qkv[dims.qkv_offset(item, 0)..].as_ptr(), qkv[dims.qkv_offset(item, 1)..].as_ptr());
    for (start, end) in blocks(t) {
        // S[start..end, ..end] = Q[start..end] K[..end]ᵀ; the columns after are masked below.
        // Safety: q and k are (T × D) views of qkv with row stride 3C; p is T × T.
        unsafe {
            matmul(
                (end - start, end, d),
                p[start * t..].as_mut_ptr(),
                (t, 1),
                q.add(start * row),
                (row, 1),
                k,
                (1, row),
            );
        }
    }
    for (i, r) in p.chunks_mut(t).enumerate() {
        let (seen, masked) = r.split_at_mut(i + 1);
        softmax_in_place(seen, scale);
        masked.fill(0.0);
    }
}

simd_fn! {
    /// s ← softmax(s · scale), one row's visible scores.
    fn softmax_in_place(s: &mut [f32], scale: f32) {
        let max = fastmath::max(s) * scale;
        s.iter_mut().for_each(|s| *s = exp(*s * scale - max));
        let inv = 1.0 / sum_map(s, |s| s);
        s.iter_mut().for_each(|s| *s *= inv);
    }
}

simd_fn! {
    /// dp ← scale · p ⊙ (dp − p·dp): the gradient of one row's scores from its weights' gradient.
    fn softmax_grad_in_place(dp: &mut [f32], p: &[f32], scale: f32) {
        let dot = dot(p, dp);
        for (s, &p) in dp.iter_mut().zip(p) {
            *s = scale * p * (*s - dot);
        }
    }
}

struct FusedAttention {
    n_head: usize,
    scale: f32,
    /// The forward's attention weights (B·H × T × T), for the backward.
    weights: Mutex<Option<Vec<f32>>>,
}

impl CustomOp1 for FusedAttention {
    fn name(&self) -> &'static str {
        "causal-self-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32s(s, l, self.name())?;
        let dims = Dims::of(l, self.n_head)?;
        let (t, d, c) = (dims.t, dims.d, dims.c);
        // Every (batch, head) writes its own columns of y and its own T × T block of p.
        let mut y = output_buffer(dims.b * t * c);
        let mut p = output_buffer(dims.b * dims.h * t * t);
        let out = Shared(y.as_mut_ptr());
        p.par_chunks_mut(t * t).enumerate().for_each(|(item, p)| {
            weights(qkv, dims, item, self.scale, p);
            let v = qkv[dims.qkv_offset(item, 2)..].as_ptr();
            for (start, end) in blocks(t) {
                // Y[start..end] = P[start..end, ..end] V[..end].
                // Safety: y (T × D) is this item's own columns of the output, row stride C.
                unsafe {
                    matmul(
                        (end - start, d, end),
                        out.at(dims.y_offset(item) + start * c),
                        (c, 1),
                        p[start * t..].as_ptr(),
                        (t, 1),
                        v,
                        (3 * c, 1),
                    );
                }
            }
        });
        *self.weights.lock().expect("attention weights lock") = Some(p);
        Ok((CpuStorage::F32(y), Shape::from((dims.b, t, c))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let kept = self.weights.lock().expect("attention weights lock").take();
        let op = FusedAttentionGrad { n_head: self.n_head, scale: self.scale, weights: Mutex::new(kept) };
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// (qkv, dY) → dqkv, with the forward's weights when it kept them (recomputed otherwise).
struct FusedAttentionGrad {
    n_head: usize,
    scale: f32,
    weights: Mutex<Option<Vec<f32>>>,
}

impl candle_core::CustomOp2 for FusedAttentionGrad {
    fn name(&self) -> &'static str {
        "causal-self-attention-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let qkv = f32s(s1, l1, self.name())?;
        let dy = f32s(s2, l2, self.name())?;
        let dims = Dims::of(l1, self.n_head)?;
        let (t, d, c) = (dims.t, dims.d, dims.c);
        let items = dims.b * dims.h;
        let kept = self.weights.lock().expect("attention weights lock").take();
        let recompute = kept.as_ref().is_none_or(|p| p.len() != items * t * t);
        let mut p = if recompute { output_buffer(items * t * t) } else { kept.expect("checked") };
        // dQ, dK and dV of every (batch, head) cover all of dqkv.
        let mut dqkv = output_buffer(qkv.len());
        let out = Shared(dqkv.as_mut_ptr());
        let row = 3 * c;
        p.par_chunks_mut(t * t).enumerate().for_each_init(
            || vec![0f32; t * t],
            |ds, (item, p)| {
                if recompute {
                    weights(qkv, dims, item, self.scale, p);
                }
                let dy_h = dy[dims.y_offset(item)..].as_ptr();
                let part = |i| qkv[dims.qkv_offset(item, i)..].as_ptr();
                let (q, k, v) = (part(0), part(1), part(2));
                // Safety: every view below is inside qkv, dY, p, ds or this item's own columns
                // of dqkv, with the strides of its layout.
                for (start, end) in blocks(t) {
                    unsafe {
                        // dV[start..end] = P[start.., start..end]ᵀ dY[start..] (rows above are 0)
                        matmul(
                            (end - start, d, t - start),
                            out.at(dims.qkv_offset(item, 2) + start * row),
                            (row, 1),
                            p[start * t + start..].as_ptr(),
                            (1, t),
                            dy_h.add(start * c),
                            (c, 1),
                        );
                        // dP[start..end, ..end] = dY[start..end] V[..end]ᵀ
                        matmul(
                            (end - start, end, d),
                            ds[start * t..].as_mut_ptr(),
                            (t, 1),
                            dy_h.add(start * c),
                            (c, 1),
                            v,
                            (1, row),
                        );
                    }
                }
                for (i, (ds, p)) in ds.chunks_mut(t).zip(p.chunks(t)).enumerate() {
                    let (seen, masked) = ds.split_at_mut(i + 1);
                    softmax_grad_in_place(seen, &p[..=i], self.scale);
                    masked.fill(0.0);
                }
                for (start, end) in blocks(t) {
                    unsafe {
                        // dQ[start..end] = dS[start..end, ..end] K[..end]
                        matmul(
                            (end - start, d, end),
                            out.at(dims.qkv_offset(item, 0) + start * row),
                            (row, 1),
                            ds[start * t..].as_ptr(),
                            (t, 1),
                            k,
                            (row, 1),
                        );
                        // dK[start..end] = dS[start.., start..end]ᵀ Q[start..]
                        matmul(
                            (end - start, d, t - start),
                            out.at(dims.qkv_offset(item, 1) + start * row),
                            (row, 1),
                            ds[start * t + start..].as_ptr(),
                            (1, t),
                            q.add(start * row),
                            (row, 1),
                        );
                    }
                }
            },
        );
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testing::{grads, max_diff, var};

    #[test]
    fn fused_matches_plain_candle_in_value_and_gradient() {
        // 150 positions: three query blocks, the last one short.
        for (b, t, h, d) in [(2, 7, 3, 4), (1, 1, 1, 8), (3, 40, 2, 16), (1, 150, 2, 8)] {
            let qkv = var(&[b, t, 3 * h * d], 7, 2.0);
            let scale = 1.0 / (d as f64).sqrt();
            let (out, g) = grads(&[&qkv], || causal_self_attention(qkv.as_tensor(), h, scale));
            let (out_ref, g_ref) = grads(&[&qkv], || composed(qkv.as_tensor(), h, scale));
            assert_eq!(out.dims(), &[b, t, h * d]);
            assert!(max_diff(&out, &out_ref) < 1e-5, "{b}×{t}×{h}×{d}: {}", max_diff(&out, &out_ref));
            assert!(
                max_diff(&g[0], &g_ref[0]) < 1e-5,
                "{b}×{t}×{h}×{d}: gradient {}",
                max_diff(&g[0], &g_ref[0])
            );
        }
    }

    #[test]
    fn the_backward_recomputes_the_weights_when_they_were_not_kept() {
        let qkv = var(&[2, 9, 12], 3, 1.0);
        let dy = Tensor::ones((2, 9, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let op = |kept| FusedAttentionGrad { n_head: 2, scale: 0.5, weights: Mutex::new(kept) };
        let fresh = qkv.as_tensor().apply_op2_no_bwd(&dy, &op(None)).unwrap();
        let forward = FusedAttention { n_head: 2, scale: 0.5, weights: Mutex::new(None) };
        qkv.as_tensor().apply_op1_no_bwd(&forward).unwrap();
        let kept = forward.weights.lock().unwrap().take();
        assert!(kept.is_some());
        let reused = qkv.as_tensor().apply_op2_no_bwd(&dy, &op(kept)).unwrap();
        assert_eq!(max_diff(&fresh, &reused), 0.0);
    }
}
