//! Fused CPU kernels, written through candle's custom-op interface, each with its backward.
//!
//! A naive candle GPT step spends most of its time outside matmul: every element-wise op and
//! reduction is a separate pass over memory with a fresh allocation. These kernels do softmax
//! cross-entropy, causal self-attention (from the fused q/k/v projection, or from q, k and v
//! after an experiment changed them, to merged heads), dense layers with their bias, causal
//! softmax, LayerNorm, RMSNorm, GELU, SwiGLU's gate, rotary position embeddings and bias addition
//! in one or two passes each (forward and backward), split across threads
//! by rows. Rows are split in fixed-size chunks, never by thread count, so results do not depend
//! on how many threads run them.
//!
//! Each public function takes the fused path for contiguous f32 tensors on the CPU and falls back
//! to plain candle ops otherwise (CUDA, bf16), so every device keeps working. Tests check every
//! kernel against the plain path, values and gradients.

mod attention;
mod bias;
mod cross_entropy;
pub mod fastmath;
mod gelu;
mod layer_norm;
mod linear;
#[cfg(test)]
mod products;
mod rms_norm;
mod rope;
mod softmax;
mod swiglu;

pub use attention::{attention, causal_self_attention};
pub use bias::add_bias;
pub use cross_entropy::cross_entropy_sum;
pub use gelu::gelu_erf;
pub use layer_norm::layer_norm;
pub use linear::linear;
pub use rms_norm::rms_norm;
pub use rope::{rope, rope_qkv};
pub use softmax::causal_softmax;
pub use swiglu::swiglu;

use candle_core::{CpuStorage, DType, Layout, Result, Tensor};

/// Rows per parallel task: large enough to amortise scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 16;

/// Whether the fused CPU path applies to these tensors (and is not turned off).
fn fused(tensors: &[&Tensor]) -> bool {
    !plain_kernels() && tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32)
}

/// The variable that turns the fused kernels off.
pub const PLAIN_KERNELS_ENV: &str = "LMHOST_PLAIN_KERNELS";

/// `LMHOST_PLAIN_KERNELS=1` sends every kernel down its plain candle path: to measure what the
/// kernels buy, or to check a result against the unoptimised model.
pub fn plain_kernels() -> bool {
    static PLAIN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLAIN.get_or_init(|| std::env::var(PLAIN_KERNELS_ENV).is_ok_and(|v| !v.is_empty() && v != "0"))
}

/// The environment variables that change a run's numbers: `LMHOST_PLAIN_KERNELS` (the plain
/// path rounds differently) and `LMHOST_SHARDS` (the order gradients are summed in): those set,
/// with their values. The host records them with a run and counts them in its fingerprint, so a
/// run made under them is never reused for one made without.
pub fn numerics_env() -> std::collections::BTreeMap<String, String> {
    [PLAIN_KERNELS_ENV, crate::shards::SHARDS_ENV]
        .into_iter()
        .filter_map(|key| std::env::var(key).ok().map(|value| (key.to_owned(), value)))
        .collect()
}

/// What this process's f32 matrix products are computed with (`gemm`, or the BLAS loaded):
/// recorded with a run and part of its fingerprint. gemm when the backend `LMHOST_BLAS` asked
/// for cannot be loaded, as the products then use it ([`matmul_backend_error`] says why).
pub fn matmul_backend() -> &'static str {
    use candle_core::lmhost::matmul::{backend, Backend};
    match backend() {
        Ok(b) => &b.name,
        Err(_) => &Backend::GEMM.name,
    }
}

/// Why the backend `LMHOST_BLAS` asked for cannot be used, if it cannot.
pub fn matmul_backend_error() -> Option<&'static str> {
    candle_core::lmhost::matmul::backend().err()
}

/// A kernel's output buffer, left uninitialised: zeroing outputs that the kernel then overwrites
/// whole was 3 % of a CPU step (`memset`). Only for outputs whose every element the kernel
/// writes before anything reads them (candle's own `alloc_uninit` is the same idea).
#[allow(clippy::uninit_vec)]
fn output_buffer(len: usize) -> Vec<f32> {
    let mut buffer = Vec::with_capacity(len);
    // Safety: f32 has no invalid bit patterns, and every caller writes all `len` elements
    // before the buffer is read or leaves the kernel.
    unsafe { buffer.set_len(len) };
    buffer
}

/// The values of a contiguous f32 CPU storage under its layout.
pub(crate) fn f32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [f32]> {
    values(s, l, op)
}

fn u32s<'a>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [u32]> {
    values(s, l, op)
}

fn values<'a, T: candle_core::WithDType>(s: &'a CpuStorage, l: &Layout, op: &str) -> Result<&'a [T]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{op}: input must be contiguous")))?;
    Ok(&s.as_slice::<T>()?[start..end])
}

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{Device, Result, Tensor, Var};

    /// Deterministic pseudo-random values in [-scale, scale).
    pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
        let mut rng = crate::init::SplitMix::new(seed);
        (0..n).map(|_| scale * (2.0 * rng.uniform() as f32 - 1.0)).collect()
    }

    pub fn var(shape: &[usize], seed: u64, scale: f32) -> Var {
        let n = shape.iter().product();
        Var::from_tensor(&Tensor::from_vec(values(n, seed, scale), shape, &Device::Cpu).unwrap()).unwrap()
    }

    /// Largest absolute difference between two tensors of the same shape.
    pub fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let b = b.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// Gradients of `f(inputs) · weights` (a fixed random projection of the output) for each input.
    pub fn grads(inputs: &[&Var], f: impl Fn() -> Result<Tensor>) -> (Tensor, Vec<Tensor>) {
        let out = f().unwrap();
        let w = Tensor::from_vec(values(out.elem_count(), 99, 1.0), out.shape(), &Device::Cpu).unwrap();
        let g = (&out * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gs = inputs.iter().map(|v| g.get(v.as_tensor()).expect("gradient").clone()).collect();
        (out, gs)
    }
}
