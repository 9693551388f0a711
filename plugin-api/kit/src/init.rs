//! Seeded parameter creation. candle's CPU `set_seed` fails and its CPU initialisers use an
//! unseeded generator, so every parameter is drawn here instead: from a generator seeded by the
//! run seed and the parameter's name. The same name and seed give the same values whatever the
//! plugin, the build order or the device, which is what makes "the plugin path adds nothing"
//! and exact reruns possible.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use candle_core::lmhost::Arena;
use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::{Init, VarBuilder};

/// One trainable tensor: its f32 master value, and the tensor the model computes with.
#[derive(Clone, Debug)]
pub struct Param {
    /// Dotted name, e.g. `transformer.h.0.attn.c_attn.weight`.
    pub name: String,
    /// The f32 master weights, a view of its buffer's masters: what the optimiser updates and
    /// checkpoints hold.
    pub var: Var,
    /// What the model reads and the backward pass differentiates: the master itself, or a copy
    /// in the dtype the parameter was asked for (bf16 for the matrix products under mixed
    /// precision), refreshed after every update.
    pub compute: Tensor,
    /// Which of the store's buffers holds it, and where it starts there.
    pub buffer: usize,
    pub offset: usize,
}

impl Param {
    pub fn elem_count(&self) -> usize {
        self.var.elem_count()
    }
}

/// The parameters computed in one dtype: their f32 masters in one buffer and, for a dtype other
/// than f32, the copy the model computes with in a second buffer of the same layout.
struct Buffer {
    dtype: DType,
    masters: Arena,
    compute: Option<Arena>,
}

/// Every parameter of a model, in creation order, as views of a few buffers (one per dtype the
/// model computes in): so an optimiser can update all of them, and the compute copies be
/// refreshed, with a few ops over whole buffers instead of a dozen per parameter.
#[derive(Clone)]
pub struct ParamStore {
    inner: Arc<Mutex<Store>>,
    seed: u64,
}

struct Store {
    params: Vec<Param>,
    buffers: Vec<Buffer>,
}

impl ParamStore {
    pub fn new(seed: u64) -> Self {
        Self { inner: Arc::new(Mutex::new(Store { params: Vec::new(), buffers: Vec::new() })), seed }
    }

    /// A `VarBuilder` whose every `get` creates (or returns, for a repeated name) a seeded
    /// parameter in this store, computed in `dtype` unless the part asks for another
    /// (`get_with_hints_dtype`: the dense layers' bf16 under mixed precision). The masters are
    /// f32 whatever is asked.
    pub fn var_builder(&self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self.clone()), dtype, device.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Store> {
        self.inner.lock().expect("param store lock")
    }

    pub fn params(&self) -> Vec<Param> {
        self.lock().params.clone()
    }

    /// Name to current master value, e.g. to save weights.
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.params().into_iter().map(|p| (p.name, p.var.as_tensor().clone())).collect()
    }

    pub fn count(&self) -> u64 {
        self.params().iter().map(|p| p.elem_count() as u64).sum()
    }

    /// Each buffer's masters as one f32 variable `(count,)` (the parameters of buffer `b` are
    /// those with `buffer == b`, in order).
    pub fn masters(&self) -> Vec<Var> {
        self.lock()
            .buffers
            .iter()
            .map(|b| Var::from_tensor(&b.masters.whole()).expect("an arena view is a variable"))
            .collect()
    }

    /// Whether some parameters are computed with a copy in another dtype than their f32 masters.
    pub fn mixed_precision(&self) -> bool {
        self.lock().buffers.iter().any(|b| b.compute.is_some())
    }

    /// Copies the masters into the compute copies: after every change to the masters. Two ops
    /// per buffer with copies, whatever the number of parameters.
    pub fn sync_compute(&self) -> Result<()> {
        for b in &self.lock().buffers {
            if let Some(compute) = &b.compute {
                let compute = Var::from_tensor(&compute.whole())?;
                compute.set(&b.masters.whole().to_dtype(compute.dtype())?)?;
            }
        }
        Ok(())
    }

    /// Drops the spare capacity the buffers grew while the model was built.
    pub fn finish(&self) -> Result<()> {
        for b in &mut self.lock().buffers {
            b.masters.shrink_to_fit()?;
            if let Some(compute) = &mut b.compute {
                compute.shrink_to_fit()?;
            }
        }
        Ok(())
    }

    /// Overwrites every parameter from `values`; each must be present with the same shape.
    pub fn load(&self, values: &HashMap<String, Tensor>) -> Result<()> {
        for p in self.params() {
            let v = values
                .get(&p.name)
                .ok_or_else(|| candle_core::Error::Msg(format!("missing tensor `{}`", p.name)))?;
            if v.shape() != p.var.shape() {
                candle_core::bail!(
                    "tensor `{}` has shape {:?}, the model expects {:?}",
                    p.name,
                    v.dims(),
                    p.var.dims()
                );
            }
            p.var.set(&v.to_dtype(p.var.dtype())?.to_device(p.var.device())?)?;
        }
        self.sync_compute()
    }

    fn create(&self, shape: Shape, name: &str, init: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let mut store = self.lock();
        if let Some(p) = store.params.iter().find(|p| p.name == name) {
            if p.var.shape() != &shape {
                candle_core::bail!(
                    "parameter `{name}` requested with shape {shape:?}, already {:?}",
                    p.var.dims()
                );
            }
            return Ok(p.compute.clone());
        }
        let values =
            Tensor::from_vec(draw(&shape, &init, param_seed(self.seed, name))?, shape, &Device::Cpu)?;
        let index = match store.buffers.iter().position(|b| b.dtype == dtype) {
            Some(i) => i,
            None => {
                let compute = if dtype == DType::F32 { None } else { Some(Arena::new(dtype, dev)?) };
                store.buffers.push(Buffer { dtype, masters: Arena::new(DType::F32, dev)?, compute });
                store.buffers.len() - 1
            }
        };
        let buffer = &mut store.buffers[index];
        let offset = buffer.masters.len();
        let var = Var::from_tensor(&buffer.masters.push(&values)?)?;
        let compute = match buffer.compute.as_mut() {
            Some(arena) => arena.push(&values)?,
            None => var.as_tensor().clone(),
        };
        store.params.push(Param {
            name: name.to_owned(),
            var,
            compute: compute.clone(),
            buffer: index,
            offset,
        });
        Ok(compute)
    }
}

impl candle_nn::var_builder::SimpleBackend for ParamStore {
    fn get(&self, s: Shape, name: &str, h: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        self.create(s, name, h, dtype, dev)
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> Result<Tensor> {
        candle_core::bail!("parameter `{name}` must be created with a shape")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.lock().params.iter().any(|p| p.name == name)
    }
}

/// The seed of one parameter: the run seed and the name, mixed so that nearby seeds and similar
/// names give unrelated streams.
pub fn param_seed(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    splitmix64(&mut h)
}

fn draw(shape: &Shape, init: &Init, seed: u64) -> Result<Vec<f32>> {
    let n = shape.elem_count();
    let mut rng = SplitMix::new(seed);
    Ok(match *init {
        Init::Const(c) => vec![c as f32; n],
        Init::Randn { mean, stdev } => (0..n).map(|_| (mean + stdev * rng.normal()) as f32).collect(),
        Init::Uniform { lo, up } => (0..n).map(|_| (lo + (up - lo) * rng.uniform()) as f32).collect(),
        Init::Kaiming { dist, fan, non_linearity } => {
            let fan = fan.for_shape(shape) as f64;
            let std = non_linearity.gain() / fan.sqrt();
            match dist {
                candle_nn::init::NormalOrUniform::Normal => {
                    (0..n).map(|_| (std * rng.normal()) as f32).collect()
                }
                candle_nn::init::NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    (0..n).map(|_| (bound * (2.0 * rng.uniform() - 1.0)) as f32).collect()
                }
            }
        }
    })
}

fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A small, fully specified generator (SplitMix64 with Box–Muller normals), so the values of a
/// seed never change with a dependency update.
pub struct SplitMix {
    state: u64,
    spare: Option<f64>,
}

impl SplitMix {
    pub fn new(seed: u64) -> Self {
        Self { state: seed, spare: None }
    }

    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }

    /// Uniform in [0, 1), 53 bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Standard normal, Box–Muller.
    pub fn normal(&mut self) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let u1 = 1.0 - self.uniform(); // (0, 1]: ln is finite
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: u64) -> u64 {
        // Multiply-shift: unbiased enough for n far below 2^64, and fully deterministic.
        ((self.next_u64() as u128 * n as u128) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_name_and_seed_give_same_values() {
        let a = ParamStore::new(7);
        let b = ParamStore::new(7);
        let init = Init::Randn { mean: 0.0, stdev: 0.02 };
        let ta = a.var_builder(DType::F32, &Device::Cpu).get_with_hints((4, 3), "w", init).unwrap();
        // Creation order must not matter.
        b.var_builder(DType::F32, &Device::Cpu).get_with_hints(5, "other", init).unwrap();
        let tb = b.var_builder(DType::F32, &Device::Cpu).get_with_hints((4, 3), "w", init).unwrap();
        assert_eq!(ta.to_vec2::<f32>().unwrap(), tb.to_vec2::<f32>().unwrap());
        let c = ParamStore::new(8);
        let tc = c.var_builder(DType::F32, &Device::Cpu).get_with_hints((4, 3), "w", init).unwrap();
        assert_ne!(ta.to_vec2::<f32>().unwrap(), tc.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn normal_draws_have_the_requested_moments() {
        let v = draw(&Shape::from(100_000), &Init::Randn { mean: 1.0, stdev: 0.5 }, 3).unwrap();
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / v.len() as f64;
        assert!((mean - 1.0).abs() < 0.01, "mean {mean}");
        assert!((var.sqrt() - 0.5).abs() < 0.01, "std {}", var.sqrt());
    }

    #[test]
    fn a_repeated_name_returns_the_same_parameter() {
        let s = ParamStore::new(1);
        let vb = s.var_builder(DType::F32, &Device::Cpu);
        vb.get_with_hints(3, "tied", Init::Const(1.0)).unwrap();
        vb.get_with_hints(3, "tied", Init::Const(2.0)).unwrap();
        assert_eq!(s.params().len(), 1);
        assert!(vb.get_with_hints(4, "tied", Init::Const(1.0)).is_err());
    }
}
