//! Causal self-attention in one op, `y = merge(softmax(q kᵀ · scale + mask) v)`, read in place
//! from wherever q, k and v lie and written as merged heads (B, T, C). Two entry points:
//! [`causal_self_attention`] takes the fused q/k/v projection (B, T, 3C) and returns its
//! gradient in the same layout; [`attention`] takes q, k and v as (B, H, T, D) tensors after an
//! experiment changed them (rotated, normed, ...), each any view whose last dimension is
//! contiguous (the heads split out of a projection are such views, no copy made). The plain path
//! splits heads (three copies), transposes k, and merges heads (another copy); here every matrix
//! product is one matrix-product call on strided views, one (batch, head) pair per task, and the attention
//! weights are kept from the forward for the backward.
//!
//! Backward (P the weights, dY the output gradient, per head): dV = Pᵀ dY, dP = dY Vᵀ,
//! dS = scale · P ⊙ (dP − rowsum(P ⊙ dP)), dQ = dS K, dK = dSᵀ Q.
//!
//! The mask makes P and dS lower triangular, so each product runs over blocks of
//! [`BLOCK`] query rows (or key columns) and only the keys (queries) the block can see: at
//! T = 128 that is 3/4 of the full products' arithmetic, at T = 256 5/8.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, Layout, Result, Shape, Storage, Tensor};
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
        let (b, t, _) = qkv.dims3()?;
        count_products(b * n_head, t, c3 / 3 / n_head);
        let op = PackedAttention { n_head, scale: scale as f32, weights: Mutex::new(None) };
        return qkv.contiguous()?.apply_op1(op);
    }
    let c = c3 / 3;
    let heads = |i: usize| crate::nn::split_heads(&qkv.narrow(2, i * c, c)?, n_head);
    composed(&heads(0)?, &heads(1)?, &heads(2)?, scale)
}

/// What the fused kernels multiply, counted as the composed path's `matmul`s count theirs:
/// q kᵀ and the weights times v, each (heads, T, T) by D, the causal half included.
fn count_products(heads: usize, t: usize, d: usize) {
    candle_core::lmhost::flops::count_matmul(heads, t, t, d);
    candle_core::lmhost::flops::count_matmul(heads, t, d, t);
}

/// q, k, v: (B, H, T, D) → merged heads (B, T, H·D): the same attention from separate q, k and v.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let dims = q.dims4()?;
    if k.dims4()? != dims || v.dims4()? != dims {
        candle_core::bail!("attention: q {:?}, k {:?} and v {:?} differ", q.dims(), k.dims(), v.dims());
    }
    if fused(&[q, k, v]) {
        count_products(dims.0 * dims.1, dims.2, dims.3);
        let unit_rows = |x: &Tensor| -> Result<Tensor> {
            match x.stride()[3] == 1 {
                true => Ok(x.clone()),
                false => x.contiguous(),
            }
        };
        let op = HeadsAttention { scale: scale as f32, weights: Mutex::new(None) };
        return unit_rows(q)?.apply_op3(&unit_rows(k)?, &unit_rows(v)?, op);
    }
    composed(q, k, v, scale)
}

/// The same with plain candle ops (CUDA, bf16). The scores and their softmax are f32 whatever
/// q and k are (in bf16 the scores keep 8 bits, and a tiny model's validation loss ended 0.05
/// nats higher than in f32 for it); the weights meet v in v's dtype.
fn composed(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
    let f = candle_core::DType::F32;
    let scores = q.to_dtype(f)?.contiguous()?.matmul(&k.to_dtype(f)?.contiguous()?.t()?)?;
    let weights = super::causal_softmax(&scores, scale)?.to_dtype(v.dtype())?;
    crate::nn::merge_heads(&weights.matmul(&v.contiguous()?)?)
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
    h: usize,
    d: usize,
}

impl Dims {
    fn items(&self) -> usize {
        self.b * self.h
    }
}

/// Where each (batch, head)'s T × D matrix lies in a buffer: element (t, i) of the pair (b, h)
/// is at `start + b·batch + h·head + t·row + i`.
#[derive(Clone, Copy)]
struct Place {
    start: usize,
    batch: usize,
    head: usize,
    row: usize,
}

impl Place {
    /// Part `part` (0 q, 1 k, 2 v) of a (B, T, 3C) projection.
    fn packed(dims: Dims, part: usize) -> Self {
        let c = dims.h * dims.d;
        Self { start: part * c, batch: dims.t * 3 * c, head: dims.d, row: 3 * c }
    }

    /// Merged heads (B, T, C).
    fn merged(dims: Dims) -> Self {
        let c = dims.h * dims.d;
        Self { start: 0, batch: dims.t * c, head: dims.d, row: c }
    }

    /// Contiguous (B, H, T, D), `start` elements into its buffer.
    fn heads(dims: Dims, start: usize) -> Self {
        Self { start, batch: dims.h * dims.t * dims.d, head: dims.t * dims.d, row: dims.d }
    }

    /// A (B, H, T, D) layout whose last dimension is contiguous.
    fn of(l: &Layout) -> Self {
        let s = l.stride();
        Self { start: l.start_offset(), batch: s[0], head: s[1], row: s[2] }
    }

    /// Offset of item `b·H + h`'s matrix.
    fn at(&self, dims: Dims, item: usize) -> usize {
        self.start + (item / dims.h) * self.batch + (item % dims.h) * self.head
    }
}

/// A buffer read through a [`Place`].
#[derive(Clone, Copy)]
struct Operand<'a> {
    data: &'a [f32],
    place: Place,
}

impl Operand<'_> {
    fn ptr(&self, dims: Dims, item: usize) -> *const f32 {
        self.data[self.place.at(dims, item)..].as_ptr()
    }
}

/// A buffer tasks write through, each to its own (batch, head)'s matrix only.
#[derive(Clone, Copy)]
struct Output {
    ptr: *mut f32,
    place: Place,
}
// Safety: every task writes a disjoint set of elements (its own (batch, head) matrix).
unsafe impl Send for Output {}
unsafe impl Sync for Output {}

impl Output {
    /// The start of item `item`'s matrix (a method, so closures capture the whole `Output`).
    fn at(&self, dims: Dims, item: usize) -> *mut f32 {
        self.ptr.wrapping_add(self.place.at(dims, item))
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
    candle_core::lmhost::matmul::sgemm(
        (m, n, k),
        dst,
        (dst_rs, dst_cs),
        false,
        lhs,
        (lhs_rs, lhs_cs),
        rhs,
        (rhs_rs, rhs_cs),
        1,
    )
}

/// The causal attention weights of one (batch, head): P = softmax(scale · Q Kᵀ + mask), (T × T)
/// row-major, masked entries 0.
fn weights([q, k]: [Operand; 2], dims: Dims, item: usize, scale: f32, p: &mut [f32]) {
    let t = dims.t;
    let (q_rows, k_rows) = (q.place.row, k.place.row);
    let (q, k) = (q.ptr(dims, item), k.ptr(dims, item));
    for (start, end) in blocks(t) {
        // S[start..end, ..end] = Q[start..end] K[..end]ᵀ; the columns after are masked below.
        // Safety: q and k are (T × D) views with their row strides; p is T × T.
        unsafe {
            matmul(
                (end - start, end, dims.d),
                p[start * t..].as_mut_ptr(),
                (t, 1),
                q.add(start * q_rows),
                (q_rows, 1),
                k,
                (1, k_rows),
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

/// y (B, T, C) and the weights P (B·H × T × T) of q, k and v.
fn forward([q, k, v]: [Operand; 3], dims: Dims, scale: f32) -> (Vec<f32>, Vec<f32>) {
    let (t, d) = (dims.t, dims.d);
    // Every (batch, head) writes its own columns of y and its own T × T block of p.
    let mut y = output_buffer(dims.b * t * dims.h * d);
    let mut p = output_buffer(dims.items() * t * t);
    let out = Output { ptr: y.as_mut_ptr(), place: Place::merged(dims) };
    p.par_chunks_mut(t * t).enumerate().for_each(|(item, p)| {
        weights([q, k], dims, item, scale, p);
        let v_h = v.ptr(dims, item);
        for (start, end) in blocks(t) {
            // Y[start..end] = P[start..end, ..end] V[..end].
            // Safety: y (T × D) is this item's own columns of the output.
            unsafe {
                matmul(
                    (end - start, d, end),
                    out.at(dims, item).add(start * out.place.row),
                    (out.place.row, 1),
                    p[start * t..].as_ptr(),
                    (t, 1),
                    v_h,
                    (v.place.row, 1),
                );
            }
        }
    });
    (y, p)
}

/// dQ, dK and dV into `grads`, from q, k, v, the output gradient dY (merged heads) and the
/// forward's weights when it kept them (recomputed otherwise).
fn backward(
    [q, k, v]: [Operand; 3],
    dy: &[f32],
    dims: Dims,
    scale: f32,
    kept: Option<Vec<f32>>,
    grads: [Output; 3],
) {
    let t = dims.t;
    let recompute = kept.as_ref().is_none_or(|p| p.len() != dims.items() * t * t);
    let mut p = if recompute { output_buffer(dims.items() * t * t) } else { kept.expect("checked") };
    let dy = Operand { data: dy, place: Place::merged(dims) };
    let [dq, dk, dv] = grads;
    let rows = |x: &Operand| (x.place.row, 1);
    p.par_chunks_mut(t * t).enumerate().for_each_init(
        || vec![0f32; t * t],
        |ds, (item, p)| {
            if recompute {
                weights([q, k], dims, item, scale, p);
            }
            let (q_h, k_h, v_h, dy_h) =
                (q.ptr(dims, item), k.ptr(dims, item), v.ptr(dims, item), dy.ptr(dims, item));
            let d = dims.d;
            // Safety: every view below is inside q, k, v, dY, p, ds or this item's own matrices
            // of the gradients, with the strides of their places.
            for (start, end) in blocks(t) {
                unsafe {
                    // dV[start..end] = P[start.., start..end]ᵀ dY[start..] (rows above are 0)
                    matmul(
                        (end - start, d, t - start),
                        dv.at(dims, item).add(start * dv.place.row),
                        (dv.place.row, 1),
                        p[start * t + start..].as_ptr(),
                        (1, t),
                        dy_h.add(start * dy.place.row),
                        rows(&dy),
                    );
                    // dP[start..end, ..end] = dY[start..end] V[..end]ᵀ
                    matmul(
                        (end - start, end, d),
                        ds[start * t..].as_mut_ptr(),
                        (t, 1),
                        dy_h.add(start * dy.place.row),
                        rows(&dy),
                        v_h,
                        (1, v.place.row),
                    );
                }
            }
            for (i, (ds, p)) in ds.chunks_mut(t).zip(p.chunks(t)).enumerate() {
                let (seen, masked) = ds.split_at_mut(i + 1);
                softmax_grad_in_place(seen, &p[..=i], scale);
                masked.fill(0.0);
            }
            for (start, end) in blocks(t) {
                unsafe {
                    // dQ[start..end] = dS[start..end, ..end] K[..end]
                    matmul(
                        (end - start, d, end),
                        dq.at(dims, item).add(start * dq.place.row),
                        (dq.place.row, 1),
                        ds[start * t..].as_ptr(),
                        (t, 1),
                        k_h,
                        rows(&k),
                    );
                    // dK[start..end] = dS[start.., start..end]ᵀ Q[start..]
                    matmul(
                        (end - start, d, t - start),
                        dk.at(dims, item).add(start * dk.place.row),
                        (dk.place.row, 1),
                        ds[start * t + start..].as_ptr(),
                        (1, t),
                        q_h.add(start * q.place.row),
                        rows(&q),
                    );
                }
            }
        },
    );
}

/// The attention of a fused (B, T, 3C) projection; its gradient has the same layout.
struct PackedAttention {
    n_head: usize,
    scale: f32,
    /// The forward's attention weights (B·H × T × T), for the backward.
    weights: Mutex<Option<Vec<f32>>>,
}

impl PackedAttention {
    fn dims(&self, l: &Layout) -> Result<Dims> {
        let (b, t, c3) = l.shape().dims3()?;
        Ok(Dims { b, t, h: self.n_head, d: c3 / 3 / self.n_head })
    }
}

fn packed_parts(qkv: &[f32], dims: Dims) -> [Operand<'_>; 3] {
    [0, 1, 2].map(|part| Operand { data: qkv, place: Place::packed(dims, part) })
}

impl CustomOp1 for PackedAttention {
    fn name(&self) -> &'static str {
        "causal-self-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let qkv = f32s(s, l, self.name())?;
        let dims = self.dims(l)?;
        let (y, p) = forward(packed_parts(qkv, dims), dims, self.scale);
        *self.weights.lock().expect("attention weights lock") = Some(p);
        Ok((CpuStorage::F32(y), Shape::from((dims.b, dims.t, dims.h * dims.d))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let kept = self.weights.lock().expect("attention weights lock").take();
        let op = PackedAttentionGrad { n_head: self.n_head, scale: self.scale, weights: Mutex::new(kept) };
        Ok(Some(arg.apply_op2_no_bwd(&grad.contiguous()?, &op)?))
    }
}

/// (qkv, dY) → dqkv.
struct PackedAttentionGrad {
    n_head: usize,
    scale: f32,
    weights: Mutex<Option<Vec<f32>>>,
}

impl candle_core::CustomOp2 for PackedAttentionGrad {
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
        let (b, t, c3) = l1.shape().dims3()?;
        let dims = Dims { b, t, h: self.n_head, d: c3 / 3 / self.n_head };
        // dQ, dK and dV of every (batch, head) cover all of dqkv.
        let mut dqkv = output_buffer(qkv.len());
        let grads = [0, 1, 2].map(|part| Output { ptr: dqkv.as_mut_ptr(), place: Place::packed(dims, part) });
        let kept = self.weights.lock().expect("attention weights lock").take();
        backward(packed_parts(qkv, dims), dy, dims, self.scale, kept, grads);
        Ok((CpuStorage::F32(dqkv), l1.shape().clone()))
    }
}

fn cpu(s: &Storage) -> Result<&CpuStorage> {
    match s {
        Storage::Cpu(s) => Ok(s),
        _ => candle_core::bail!("attention-grad: inputs must be on the CPU"),
    }
}

/// The attention of separate (B, H, T, D) views.
struct HeadsAttention {
    scale: f32,
    weights: Mutex<Option<Vec<f32>>>,
}

fn heads_dims(l: &Layout) -> Result<Dims> {
    let (b, h, t, d) = l.shape().dims4()?;
    Ok(Dims { b, t, h, d })
}

fn heads_operand<'a>(s: &'a CpuStorage, l: &Layout) -> Result<Operand<'a>> {
    Ok(Operand { data: s.as_slice::<f32>()?, place: Place::of(l) })
}

impl CustomOp3 for HeadsAttention {
    fn name(&self) -> &'static str {
        "attention"
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
        let dims = heads_dims(l1)?;
        let parts = [heads_operand(s1, l1)?, heads_operand(s2, l2)?, heads_operand(s3, l3)?];
        let (y, p) = forward(parts, dims, self.scale);
        *self.weights.lock().expect("attention weights lock") = Some(p);
        Ok((CpuStorage::F32(y), Shape::from((dims.b, dims.t, dims.h * dims.d))))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        // One op returns (3, B, H, T, D): dq, dk and dv, each contiguous.
        let kept = self.weights.lock().expect("attention weights lock").take();
        let op = HeadsAttentionGrad {
            inputs: [q.clone(), k.clone(), v.clone()],
            scale: self.scale,
            weights: Mutex::new(kept),
        };
        let packed = grad.contiguous()?.apply_op1_no_bwd(&op)?;
        Ok((Some(packed.get(0)?), Some(packed.get(1)?), Some(packed.get(2)?)))
    }
}

/// dY → (dq, dk, dv) stacked, for the q, k and v it holds (a custom op has at most three inputs).
struct HeadsAttentionGrad {
    inputs: [Tensor; 3],
    scale: f32,
    weights: Mutex<Option<Vec<f32>>>,
}

impl CustomOp1 for HeadsAttentionGrad {
    fn name(&self) -> &'static str {
        "attention-grad"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let dy = f32s(s, l, self.name())?;
        let [q, k, v] = &self.inputs;
        let dims = heads_dims(q.layout())?;
        let (qs, ks, vs) = (q.storage_and_layout().0, k.storage_and_layout().0, v.storage_and_layout().0);
        let parts = [
            heads_operand(cpu(&qs)?, q.layout())?,
            heads_operand(cpu(&ks)?, k.layout())?,
            heads_operand(cpu(&vs)?, v.layout())?,
        ];
        let n = dims.items() * dims.t * dims.d;
        let mut packed = output_buffer(3 * n);
        let grads =
            [0, 1, 2].map(|part| Output { ptr: packed.as_mut_ptr(), place: Place::heads(dims, part * n) });
        let kept = self.weights.lock().expect("attention weights lock").take();
        backward(parts, dy, dims, self.scale, kept, grads);
        Ok((CpuStorage::F32(packed), Shape::from((3, dims.b, dims.h, dims.t, dims.d))))
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
            let plain = || {
                let c = h * d;
                let heads = |i: usize| crate::nn::split_heads(&qkv.as_tensor().narrow(2, i * c, c)?, h);
                composed(&heads(0)?, &heads(1)?, &heads(2)?, scale)
            };
            let (out_ref, g_ref) = grads(&[&qkv], plain);
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
    fn separate_heads_match_plain_candle_contiguous_or_as_views_of_a_projection() {
        for (b, t, h, d) in [(2, 7, 3, 4), (1, 150, 2, 8)] {
            let scale = 1.0 / (d as f64).sqrt();
            // Contiguous q, k, v of their own.
            let (q, k, v) =
                (var(&[b, h, t, d], 1, 2.0), var(&[b, h, t, d], 2, 2.0), var(&[b, h, t, d], 3, 2.0));
            let (out, g) =
                grads(&[&q, &k, &v], || attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), scale));
            let (out_ref, g_ref) =
                grads(&[&q, &k, &v], || composed(q.as_tensor(), k.as_tensor(), v.as_tensor(), scale));
            assert!(max_diff(&out, &out_ref) < 1e-5);
            for (a, r) in g.iter().zip(&g_ref) {
                assert!(max_diff(a, r) < 1e-5, "{b}×{t}×{h}×{d}: gradient {}", max_diff(a, r));
            }
            // Strided views of one projection (B, T, 3, H, D), as `CausalSelfAttention::qkv`
            // makes them.
            let qkv = var(&[b, t, 3 * h * d], 4, 2.0);
            let views = |qkv: &Tensor| -> Result<[Tensor; 3]> {
                let x = qkv.reshape((b, t, 3, h, d))?;
                let part = |i: usize| x.narrow(2, i, 1)?.squeeze(2)?.transpose(1, 2);
                Ok([part(0)?, part(1)?, part(2)?])
            };
            let (out, g) = grads(&[&qkv], || {
                let [q, k, v] = views(qkv.as_tensor())?;
                assert!(!q.is_contiguous());
                attention(&q, &k, &v, scale)
            });
            let (out_ref, g_ref) = grads(&[&qkv], || causal_self_attention(qkv.as_tensor(), h, scale));
            assert!(max_diff(&out, &out_ref) < 1e-5);
            assert!(max_diff(&g[0], &g_ref[0]) < 1e-5, "views: gradient {}", max_diff(&g[0], &g_ref[0]));
        }
    }

    #[test]
    fn the_backward_recomputes_the_weights_when_they_were_not_kept() {
        let qkv = var(&[2, 9, 12], 3, 1.0);
        let dy = Tensor::ones((2, 9, 4), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let op = |kept| PackedAttentionGrad { n_head: 2, scale: 0.5, weights: Mutex::new(kept) };
        let fresh = qkv.as_tensor().apply_op2_no_bwd(&dy, &op(None)).unwrap();
        let forward = PackedAttention { n_head: 2, scale: 0.5, weights: Mutex::new(None) };
        qkv.as_tensor().apply_op1_no_bwd(&forward).unwrap();
        let kept = forward.weights.lock().unwrap().take();
        assert!(kept.is_some());
        let reused = qkv.as_tensor().apply_op2_no_bwd(&dy, &op(kept)).unwrap();
        assert_eq!(max_diff(&fresh, &reused), 0.0);
    }
}
