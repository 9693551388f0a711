//! Optimisers with state that can be checkpointed: AdamW, Adagrad and SGD, with the update rules
//! of PyTorch's `torch.optim` (so results transfer), weight-decay exclusion by parameter name and
//! global-norm gradient clipping. candle-nn's own optimisers keep their state private and offer
//! neither Adagrad nor clipping.

use std::collections::HashMap;

use candle_core::{Result, Tensor};

use crate::init::Param;

crate::knob_enum! {
    /// The update rule.
    pub enum OptimizerKind {
        AdamW = "adamw",
        Adagrad = "adagrad",
        Sgd = "sgd",
    }
}

crate::knobs! {
    /// Optimiser settings; the learning rate comes from the host's schedule each step.
    pub struct OptimConfig {
        /// adamw (decoupled weight decay), adagrad (lmplay's published runs) or sgd.
        pub optimizer: OptimizerKind = OptimizerKind::AdamW,
        /// AdamW's first-moment decay.
        pub beta1: f64 = 0.9,
        /// AdamW's second-moment decay.
        pub beta2: f64 = 0.95,
        /// Added to the denominator of adamw and adagrad.
        pub eps: f64 = 1e-8,
        /// Decoupled for adamw; added to the gradient (L2) for adagrad and sgd.
        pub weight_decay: f64 = 0.1,
        /// Comma-separated fragments of parameter names that never decay.
        pub no_decay: String = "bias,ln_,wpe".to_owned(),
        /// Clip the global gradient norm to this; 0 turns clipping off.
        pub grad_clip: f64 = 1.0,
        /// SGD momentum (0 = plain SGD).
        pub momentum: f64 = 0.0,
    }
}

impl OptimConfig {
    /// Whether weight decay applies to a parameter of this name.
    pub fn decays(&self, name: &str) -> bool {
        !self.no_decay.split(',').map(str::trim).any(|frag| !frag.is_empty() && name.contains(frag))
    }

    fn slots(&self) -> &'static [&'static str] {
        match self.optimizer {
            OptimizerKind::AdamW => &["exp_avg", "exp_avg_sq"],
            OptimizerKind::Adagrad => &["sum"],
            OptimizerKind::Sgd if self.momentum != 0.0 => &["momentum_buffer"],
            OptimizerKind::Sgd => &[],
        }
    }
}

/// How one parameter is optimised where an experiment departs from the common settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamOptions {
    /// Multiplies the learning rate of every step (muP's 1/width for hidden weights).
    pub lr_scale: f64,
    /// Weight decay on or off regardless of `no_decay` (e.g. off for learned gains).
    pub weight_decay: Option<bool>,
}

impl Default for ParamOptions {
    fn default() -> Self {
        Self { lr_scale: 1.0, weight_decay: None }
    }
}

/// The optimiser of one model: its parameters, their state slots, and how many steps it took.
pub struct Optimizer {
    config: OptimConfig,
    params: Vec<Param>,
    decay: Vec<bool>,
    lr_scale: Vec<f64>,
    /// `state[i][s]`: slot `s` of parameter `i`.
    state: Vec<Vec<Tensor>>,
    steps: u64,
}

impl Optimizer {
    /// `options[i]` belongs to parameter `i`.
    pub fn new(config: &OptimConfig, params: Vec<Param>, options: Vec<ParamOptions>) -> Result<Self> {
        let slots = config.slots().len();
        let state =
            params.iter().map(|p| (0..slots).map(|_| p.var.zeros_like()).collect()).collect::<Result<_>>()?;
        Ok(Self {
            decay: params
                .iter()
                .zip(&options)
                .map(|(p, o)| o.weight_decay.unwrap_or(config.decays(&p.name)))
                .collect(),
            lr_scale: options.iter().map(|o| o.lr_scale).collect(),
            config: config.clone(),
            params,
            state,
            steps: 0,
        })
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Applies one update; `grads[i]` belongs to parameter `i` (`None`: left unchanged).
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<()> {
        self.step_with(grads, lr, 1.0, true)
    }

    /// [`step`](Self::step) with every gradient multiplied by `grad_scale` first (clipping),
    /// without a scaled copy of the gradients.
    pub fn step_scaled(&mut self, grads: &[Option<Tensor>], lr: f64, grad_scale: f64) -> Result<()> {
        self.step_with(grads, lr, grad_scale, true)
    }

    /// `allow_fused: false` takes the tensor-op path every device has (tests compare the two).
    fn step_with(
        &mut self,
        grads: &[Option<Tensor>],
        lr: f64,
        grad_scale: f64,
        allow_fused: bool,
    ) -> Result<()> {
        self.steps += 1;
        let c = &self.config;
        let t = self.steps as i32;
        for (i, grad) in grads.iter().enumerate() {
            let Some(g) = grad else { continue };
            let theta = self.params[i].var.as_tensor();
            let wd = if self.decay[i] { c.weight_decay } else { 0.0 };
            let lr = lr * self.lr_scale[i];
            let slots = &mut self.state[i];
            if allow_fused
                && c.optimizer == OptimizerKind::AdamW
                && fused::applies(&[theta, g, &slots[0], &slots[1]])
            {
                fused::adamw(theta, g, grad_scale as f32, &slots[0], &slots[1], c, lr, wd, t)?;
                continue;
            }
            let scaled;
            let g = if grad_scale == 1.0 {
                g
            } else {
                scaled = (g * grad_scale)?;
                &scaled
            };
            let updated = match c.optimizer {
                // Loshchilov & Hutter, "Decoupled Weight Decay Regularization", Algorithm 2.
                OptimizerKind::AdamW => {
                    let m = ((&slots[0] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
                    let v = ((&slots[1] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                    let step_size = lr / (1.0 - c.beta1.powi(t));
                    let denom = ((v.sqrt()? / (1.0 - c.beta2.powi(t)).sqrt())? + c.eps)?;
                    let decayed = (theta * (1.0 - lr * wd))?;
                    let new = (decayed - (m.div(&denom)? * step_size)?)?;
                    slots[0] = m;
                    slots[1] = v;
                    new
                }
                // Duchi et al. 2011, as torch.optim.Adagrad (lr_decay 0, initial sum 0).
                OptimizerKind::Adagrad => {
                    let g = with_l2(g, theta, wd)?;
                    let sum = (&slots[0] + g.sqr()?)?;
                    let new = (theta - ((g / (sum.sqrt()? + c.eps)?)? * lr)?)?;
                    slots[0] = sum;
                    new
                }
                OptimizerKind::Sgd => {
                    let mut g = with_l2(g, theta, wd)?;
                    if c.momentum != 0.0 {
                        let buf = ((&slots[0] * c.momentum)? + &g)?;
                        slots[0] = buf.clone();
                        g = buf;
                    }
                    (theta - (g * lr)?)?
                }
            };
            self.params[i].var.set(&updated)?;
        }
        Ok(())
    }

    /// Every state tensor, named `optim.<param>.<slot>`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let slots = self.config.slots();
        self.params
            .iter()
            .zip(&self.state)
            .flat_map(|(p, s)| {
                s.iter().zip(slots).map(move |(t, slot)| (format!("optim.{}.{slot}", p.name), t.clone()))
            })
            .collect()
    }

    /// Restores what [`state`](Self::state) gave and the number of steps taken.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        let slots = self.config.slots();
        for (p, s) in self.params.iter().zip(self.state.iter_mut()) {
            for (t, slot) in s.iter_mut().zip(slots) {
                let name = format!("optim.{}.{slot}", p.name);
                let v = tensors.get(&name).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "missing optimiser state `{name}` (was the checkpoint written with another optimizer?)"
                    ))
                })?;
                if v.shape() != t.shape() {
                    candle_core::bail!(
                        "optimiser state `{name}` has shape {:?}, expected {:?}",
                        v.dims(),
                        t.dims()
                    );
                }
                *t = v.to_dtype(t.dtype())?.to_device(t.device())?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// AdamW on the CPU in one pass and no allocation, instead of a dozen tensor ops with a fresh
/// buffer each: the same arithmetic as the generic path above, each of θ, m, v and g read once.
mod fused {
    use std::cell::Cell;

    use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Tensor};
    use rayon::prelude::*;

    use super::OptimConfig;
    use crate::kernels::f32s;
    use crate::kernels::fastmath::simd_fn;

    const CHUNK: usize = 1 << 14;

    pub fn applies(tensors: &[&Tensor]) -> bool {
        !crate::kernels::plain_kernels()
            && tensors.iter().all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && t.is_contiguous())
    }

    /// One AdamW step's constants (Loshchilov & Hutter, Algorithm 2).
    #[derive(Clone, Copy)]
    struct Step {
        beta1: f32,
        beta2: f32,
        /// Clipping's factor, applied to g first.
        grad_scale: f32,
        /// 1 − lr · wd.
        keep: f32,
        /// lr / (1 − β1ᵗ).
        step_size: f32,
        /// 1 / √(1 − β2ᵗ).
        inv_sqrt_bias2: f32,
        eps: f32,
    }

    simd_fn! {
        /// m ← β1 m + (1 − β1) g, v ← β2 v + (1 − β2) g², θ ← keep · θ − step_size · m / (√v / √(1 − β2ᵗ) + eps).
        fn adamw_chunk(theta: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: Step) {
            for (((p, m), v), &g) in theta.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                let g = g * s.grad_scale;
                *m = s.beta1 * *m + (1.0 - s.beta1) * g;
                *v = s.beta2 * *v + (1.0 - s.beta2) * (g * g);
                *p = s.keep * *p - s.step_size * *m / (v.sqrt() * s.inv_sqrt_bias2 + s.eps);
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub fn adamw(
        theta: &Tensor,
        g: &Tensor,
        grad_scale: f32,
        m: &Tensor,
        v: &Tensor,
        c: &OptimConfig,
        lr: f64,
        wd: f64,
        t: i32,
    ) -> Result<()> {
        let step = Step {
            beta1: c.beta1 as f32,
            beta2: c.beta2 as f32,
            grad_scale,
            keep: (1.0 - lr * wd) as f32,
            step_size: (lr / (1.0 - c.beta1.powi(t))) as f32,
            inv_sqrt_bias2: (1.0 / (1.0 - c.beta2.powi(t)).sqrt()) as f32,
            eps: c.eps as f32,
        };
        let (storage, layout) = g.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else { candle_core::bail!("adamw: not a CPU tensor") };
        let g = f32s(cpu, layout, "adamw")?;
        with_mut(m, |m| {
            with_mut(v, |v| {
                with_mut(theta, |theta| {
                    if m.len() != g.len() || v.len() != g.len() || theta.len() != g.len() {
                        candle_core::bail!("adamw: parameter, gradient and state sizes differ");
                    }
                    theta
                        .par_chunks_mut(CHUNK)
                        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                        .zip(g.par_chunks(CHUNK))
                        .for_each(|((theta, (m, v)), g)| adamw_chunk(theta, m, v, g, step));
                    Ok(())
                })
            })
        })
    }

    /// Calls `f` with a contiguous CPU f32 tensor's values borrowed mutably, under the write lock
    /// candle holds for an in-place op: how one pass can update θ, m and v together.
    fn with_mut(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<()>) -> Result<()> {
        struct Borrow<F>(Cell<Option<F>>);
        impl<F: FnOnce(&mut [f32]) -> Result<()>> InplaceOp1 for Borrow<F> {
            fn name(&self) -> &'static str {
                "adamw"
            }

            fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
                let f =
                    self.0.take().ok_or_else(|| candle_core::Error::Msg("adamw: borrowed twice".into()))?;
                f(slice_mut(s, l)?)
            }
        }
        t.inplace_op1(&Borrow(Cell::new(Some(f))))
    }

    fn slice_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> Result<&'a mut [f32]> {
        let (a, b) =
            l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("adamw: not contiguous".into()))?;
        match s {
            CpuStorage::F32(v) => Ok(&mut v[a..b]),
            _ => candle_core::bail!("adamw: expected f32"),
        }
    }

    simd_fn! {
        fn squares(x: &[f32]) -> f32 {
            crate::kernels::fastmath::dot(x, x)
        }
    }

    /// Σ g² of a contiguous CPU f32 tensor, in f64 over fixed chunks (the same on any thread count).
    pub fn sum_of_squares(g: &Tensor) -> Result<f64> {
        let (storage, layout) = g.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("sum of squares: not a CPU tensor")
        };
        let partials: Vec<f64> =
            f32s(cpu, layout, "sum of squares")?.par_chunks(CHUNK).map(|c| squares(c) as f64).collect();
        Ok(partials.iter().sum())
    }
}

fn with_l2(g: &Tensor, theta: &Tensor, wd: f64) -> Result<Tensor> {
    if wd == 0.0 {
        Ok(g.clone())
    } else {
        g + (theta * wd)?
    }
}

/// Global L2 norm of the gradients, before clipping; scales them down to `max_norm` when it is
/// exceeded (`max_norm` 0: no clipping), as `torch.nn.utils.clip_grad_norm_`.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64> {
    let norm = grad_norm(grads)?;
    let factor = clip_factor(norm, max_norm);
    if factor != 1.0 {
        for g in grads.iter_mut().flatten() {
            *g = (&*g * factor)?;
        }
    }
    Ok(norm)
}

/// Global L2 norm of the gradients (summed in f64, without a squared copy on the CPU).
pub fn grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        total += if fused::applies(&[g]) {
            fused::sum_of_squares(g)?
        } else {
            g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?
        };
    }
    Ok(total.sqrt())
}

/// What clipping multiplies the gradients by: `max_norm / (norm + 1e−6)` when the norm exceeds
/// `max_norm`, else 1 (`max_norm` 0: never clips), as `torch.nn.utils.clip_grad_norm_`.
pub fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    //! Each rule against a scalar reference written from the papers' / PyTorch's formulas, in f64.
    use super::*;
    use crate::init::ParamStore;
    use candle_core::{DType, Device};
    use candle_nn::Init;

    const THETA0: [f64; 3] = [0.5, -1.0, 2.0];
    const GRADS: [[f64; 3]; 3] = [[0.1, -0.2, 0.3], [0.05, 0.4, -0.1], [-0.3, 0.2, 0.0]];

    fn run(config: &OptimConfig, name: &str, lr: f64) -> Vec<f64> {
        let fused = run_with(config, name, lr, true);
        let generic = run_with(config, name, lr, false);
        close(&fused, &generic);
        fused
    }

    fn run_with(config: &OptimConfig, name: &str, lr: f64, allow_fused: bool) -> Vec<f64> {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        vb.get_with_hints(3, name, Init::Const(0.0)).unwrap();
        let p = store.params();
        p[0].var.set(&Tensor::new(&THETA0.map(|x| x as f32), &Device::Cpu).unwrap()).unwrap();
        let mut opt = Optimizer::new(config, p.clone(), vec![ParamOptions::default()]).unwrap();
        for g in GRADS {
            let g = Tensor::new(&g.map(|x| x as f32), &Device::Cpu).unwrap();
            opt.step_with(&[Some(g)], lr, 1.0, allow_fused).unwrap();
        }
        p[0].var.as_tensor().to_vec1::<f32>().unwrap().into_iter().map(f64::from).collect()
    }

    fn close(a: &[f64], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn adamw_matches_reference() {
        let cfg = OptimConfig::default();
        let (lr, wd) = (0.01, cfg.weight_decay);
        let mut theta = THETA0;
        let (mut m, mut v) = ([0.0; 3], [0.0; 3]);
        for (t, g) in GRADS.iter().enumerate() {
            let t = t as i32 + 1;
            for i in 0..3 {
                theta[i] *= 1.0 - lr * wd;
                m[i] = 0.9 * m[i] + 0.1 * g[i];
                v[i] = 0.95 * v[i] + 0.05 * g[i] * g[i];
                let mh = m[i] / (1.0 - 0.9f64.powi(t));
                let vh = v[i] / (1.0 - 0.95f64.powi(t));
                theta[i] -= lr * mh / (vh.sqrt() + 1e-8);
            }
        }
        close(&run(&cfg, "w", lr), &theta);
        // A name matching `no_decay` skips the decay term.
        let no_decay = run(&cfg, "h.0.ln_1.bias", lr);
        assert!((no_decay[0] - theta[0]).abs() > 1e-6);
    }

    #[test]
    fn adagrad_matches_reference() {
        let cfg = OptimConfig {
            optimizer: OptimizerKind::Adagrad,
            weight_decay: 0.0,
            eps: 1e-10,
            ..OptimConfig::default()
        };
        let lr = 0.1;
        let mut theta = THETA0;
        let mut sum = [0.0; 3];
        for g in GRADS {
            for i in 0..3 {
                sum[i] += g[i] * g[i];
                theta[i] -= lr * g[i] / (sum[i].sqrt() + 1e-10);
            }
        }
        // The zero gradient of the last step leaves theta[2] unchanged, without NaN.
        close(&run(&cfg, "w", lr), &theta);
    }

    #[test]
    fn sgd_with_momentum_and_l2_matches_reference() {
        let cfg = OptimConfig {
            optimizer: OptimizerKind::Sgd,
            momentum: 0.9,
            weight_decay: 0.01,
            ..OptimConfig::default()
        };
        let lr = 0.1;
        let mut theta = THETA0;
        let mut buf = [0.0; 3];
        for g in GRADS {
            for i in 0..3 {
                let gi = g[i] + 0.01 * theta[i];
                buf[i] = 0.9 * buf[i] + gi;
                theta[i] -= lr * buf[i];
            }
        }
        close(&run(&cfg, "w", lr), &theta);
    }

    #[test]
    fn per_parameter_options_scale_the_rate_and_override_decay() {
        let cfg = OptimConfig { optimizer: OptimizerKind::Sgd, weight_decay: 0.5, ..OptimConfig::default() };
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        for name in ["w", "half", "h.bias"] {
            vb.get_with_hints(1, name, Init::Const(1.0)).unwrap();
        }
        let options = vec![
            ParamOptions::default(),
            ParamOptions { lr_scale: 0.5, weight_decay: Some(false) },
            ParamOptions { lr_scale: 1.0, weight_decay: Some(true) },
        ];
        let mut opt = Optimizer::new(&cfg, store.params(), options).unwrap();
        let g = || Some(Tensor::new(&[1f32], &Device::Cpu).unwrap());
        opt.step(&[g(), g(), g()], 0.1).unwrap();
        let v: Vec<f32> =
            store.params().iter().map(|p| p.var.as_tensor().to_vec1::<f32>().unwrap()[0]).collect();
        // θ − lr·(g + wd·θ): decayed 1 − 0.1·1.5; half rate, no decay 1 − 0.05·1; bias forced to decay.
        assert!(
            (v[0] - 0.85).abs() < 1e-6 && (v[1] - 0.95).abs() < 1e-6 && (v[2] - 0.85).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn clipping_scales_to_max_norm_and_reports_the_norm_before() {
        let dev = Device::Cpu;
        let mut grads = vec![
            Some(Tensor::new(&[3f32, 0.], &dev).unwrap()),
            None,
            Some(Tensor::new(&[4f32], &dev).unwrap()),
        ];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let a = grads[0].as_ref().unwrap().to_vec1::<f32>().unwrap();
        assert!((a[0] - 0.6).abs() < 1e-5);
        let norm = clip_grad_norm(&mut grads, 0.0).unwrap();
        assert!((norm - 1.0).abs() < 1e-5);
    }

    #[test]
    fn a_scaled_step_is_a_step_on_scaled_gradients() {
        let cfg = OptimConfig::default();
        let values: Vec<f32> = (0..5000).map(|i| ((i * 37) % 101) as f32 * 0.01 - 0.5).collect();
        let theta = |store: &ParamStore| store.params()[0].var.as_tensor().to_vec1::<f32>().unwrap();
        let mut results = Vec::new();
        for scaled_inside in [false, true] {
            let store = ParamStore::new(0);
            store.var_builder(DType::F32, &Device::Cpu).get_with_hints(5000, "w", Init::Const(1.0)).unwrap();
            let mut opt = Optimizer::new(&cfg, store.params(), vec![ParamOptions::default()]).unwrap();
            for _ in 0..3 {
                let g = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
                if scaled_inside {
                    opt.step_scaled(&[Some(g)], 1e-2, 0.3).unwrap();
                } else {
                    opt.step(&[Some((g * 0.3).unwrap())], 1e-2).unwrap();
                }
            }
            results.push(theta(&store));
        }
        assert_eq!(results[0], results[1]);
        let g = Tensor::new(values.as_slice(), &Device::Cpu).unwrap();
        let direct: f64 = values.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>().sqrt();
        assert!((grad_norm(&[Some(g), None]).unwrap() - direct).abs() < 1e-6 * direct);
    }

    #[test]
    fn state_round_trips() {
        let cfg = OptimConfig::default();
        let store = ParamStore::new(0);
        store.var_builder(DType::F32, &Device::Cpu).get_with_hints(3, "w", Init::Const(1.0)).unwrap();
        let opts = || vec![ParamOptions::default()];
        let mut a = Optimizer::new(&cfg, store.params(), opts()).unwrap();
        a.step(&[Some(Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap())], 0.1).unwrap();
        let saved: HashMap<_, _> = a.state().into_iter().collect();
        assert_eq!(saved.len(), 2);
        let mut b = Optimizer::new(&cfg, store.params(), opts()).unwrap();
        b.load_state(&saved, a.steps()).unwrap();
        assert_eq!(b.steps(), 1);
        let m = b.state()[0].1.to_vec1::<f32>().unwrap();
        assert!((m[1] - 0.2).abs() < 1e-6);
        let adagrad = OptimConfig { optimizer: OptimizerKind::Adagrad, ..OptimConfig::default() };
        let mut c = Optimizer::new(&adagrad, store.params(), opts()).unwrap();
        assert!(c.load_state(&saved, 1).unwrap_err().to_string().contains("optim.w.sum"));
    }
}
