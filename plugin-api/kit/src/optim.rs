//! Optimisers with state that can be checkpointed: AdamW, Adagrad, SGD and Muon, with the update
//! rules of PyTorch's `torch.optim` (so results transfer), weight decay for matrices only (and
//! not for names listed in `no_decay`) and global-norm gradient clipping. candle-nn's own
//! optimisers keep their state private and offer neither Adagrad, Muon nor clipping.
//!
//! The parameters are views of one master buffer ([`ParamStore`]) and each state slot is one
//! buffer of the same layout, so a step is a fixed number of ops over whole buffers, whatever
//! the number of parameters: the gradients gathered into one, the clip factor and the update
//! computed on the device, the per-parameter settings (weight decay on or off, a learning-rate
//! scale) gathered from a table of a few groups. Nothing is read back to the host. On the CPU,
//! AdamW runs as one fused pass per parameter over slices of the same buffers instead.

use std::collections::HashMap;

use candle_core::{DType, Device, Result, Tensor, Var};

use crate::init::{Param, ParamStore};

crate::knob_enum! {
    /// The update rule.
    pub enum OptimizerKind {
        AdamW = "adamw",
        Adagrad = "adagrad",
        Sgd = "sgd",
        Muon = "muon",
    }
}

crate::knobs! {
    /// Optimiser settings; the learning rate comes from the host's schedule each step.
    pub struct OptimConfig {
        /// adamw (decoupled weight decay), adagrad (lmplay's published runs), sgd, or muon
        /// (the blocks' matrices orthogonalised, AdamW for the rest).
        pub optimizer: OptimizerKind = OptimizerKind::AdamW,
        /// AdamW's first-moment decay.
        pub beta1: f64 = 0.9,
        /// AdamW's second-moment decay.
        pub beta2: f64 = 0.95,
        /// Added to the denominator of adamw and adagrad.
        pub eps: f64 = 1e-8,
        /// Decoupled for adamw; added to the gradient (L2) for adagrad and sgd.
        pub weight_decay: f64 = 0.1,
        /// Comma-separated fragments of names of matrices that never decay (vectors never do).
        pub no_decay: String = "wpe".to_owned(),
        /// Clip the global gradient norm to this; 0 turns clipping off.
        pub grad_clip: f64 = 1.0,
        /// SGD momentum (0 = plain SGD).
        pub momentum: f64 = 0.0,
        /// Muon's learning rate as a multiple of the scheduled one: 20 gives Muon's usual 0.02
        /// at lr 1e-3, with the same warm-up and decay.
        pub muon_lr_scale: f64 = 20.0,
        /// Muon's momentum μ (Nesterov).
        pub muon_momentum: f64 = 0.95,
        /// Muon's decoupled weight decay, on its own learning rate: 0.005 · 0.02 shrinks the
        /// matrices per step as AdamW's 0.1 · 1e-3 does.
        pub muon_weight_decay: f64 = 0.005,
    }
}

impl OptimConfig {
    /// Whether weight decay applies to a parameter of this name and shape: matrices decay
    /// (nanoGPT's rule: `dim >= 2`), gains and biases do not, nor names listed in `no_decay`.
    pub fn decays(&self, name: &str, dims: &[usize]) -> bool {
        dims.len() >= 2
            && !self.no_decay.split(',').map(str::trim).any(|frag| !frag.is_empty() && name.contains(frag))
    }

    /// Whether Muon updates a parameter of this name and shape: the blocks' matrices (attention
    /// and MLP); embeddings, the head, gains and biases stay on AdamW (EXPERIMENTS.md, Muon).
    pub fn orthogonalised(&self, name: &str, dims: &[usize]) -> bool {
        self.optimizer == OptimizerKind::Muon && dims.len() == 2 && name.starts_with("transformer.h.")
    }

    /// How many equal blocks Muon orthogonalises a matrix as: 3 for the kit's fused q/k/v
    /// projection (C → 3C), three C × C matrices as modded-nanogpt does; 1 otherwise.
    pub fn stacked_blocks(name: &str, dims: &[usize]) -> usize {
        match dims {
            &[rows, cols] if name.ends_with("attn.c_attn.weight") && rows == 3 * cols => 3,
            _ => 1,
        }
    }

    /// The state slots of each element; under Muon its matrices keep their momentum in slot 0
    /// (checkpointed as [`MUON_SLOT`]) and leave slot 1 unused.
    fn slots(&self) -> &'static [&'static str] {
        match self.optimizer {
            OptimizerKind::AdamW | OptimizerKind::Muon => &["exp_avg", "exp_avg_sq"],
            OptimizerKind::Adagrad => &["sum"],
            OptimizerKind::Sgd if self.momentum != 0.0 => &["momentum_buffer"],
            OptimizerKind::Sgd => &[],
        }
    }
}

/// The checkpoint name of a Muon matrix's momentum, as `torch.optim.Muon` names it.
const MUON_SLOT: &str = "momentum_buffer";

/// Newton–Schulz coefficients (a, b, c) and steps of Muon (Jordan 2024; torch.optim.Muon).
const NS_COEFFICIENTS: (f64, f64, f64) = (3.4445, -4.7750, 2.0315);
const NS_STEPS: usize = 5;

/// How one parameter is optimised where an experiment departs from the common settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ParamOptions {
    /// Multiplies the learning rate of every step (muP's 1/width for hidden weights).
    pub lr_scale: f64,
    /// Weight decay on or off regardless of its shape and `no_decay` (e.g. off for a matrix
    /// of gains).
    pub weight_decay: Option<bool>,
    /// Under `optimizer=muon`: orthogonalised or on AdamW regardless of the default rule
    /// ([`OptimConfig::orthogonalised`]); only matrices can be.
    pub muon: Option<bool>,
    /// Under Muon, a matrix stacking this many equal blocks along its rows, orthogonalised block
    /// by block; `None`: [`OptimConfig::stacked_blocks`] (3 for the fused q/k/v projection).
    pub blocks: Option<usize>,
}

impl Default for ParamOptions {
    fn default() -> Self {
        Self { lr_scale: 1.0, weight_decay: None, muon: None, blocks: None }
    }
}

/// A Muon matrix: which parameter, and the shape of the blocks it is orthogonalised in.
#[derive(Debug, Clone, Copy)]
struct MuonMatrix {
    param: usize,
    blocks: usize,
    rows: usize,
    cols: usize,
}

/// The settings one parameter is updated with: a distinct pair is one group of the update's table.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Group {
    decay: bool,
    lr_scale: f64,
}

/// One of the store's buffers as the optimiser sees it: the masters, the state slots in the same
/// layout, and which parameters lie in it.
struct Flat {
    masters: Var,
    /// Indexes into the optimiser's parameters, in layout order.
    members: Vec<usize>,
    /// `state[s]`: slot `s` of every member.
    state: Vec<Var>,
    /// Each element's group, on the device: built at the first flat step with several groups.
    element_groups: Option<Tensor>,
    /// Under Muon, 1 where an element belongs to a Muon matrix, else 0.
    muon_elements: Option<Tensor>,
}

/// The optimiser of one model: its parameters, their state slots, and how many steps it took.
pub struct Optimizer {
    config: OptimConfig,
    params: Vec<Param>,
    groups: Vec<Group>,
    /// `groups[group_of[i]]` holds parameter `i`'s settings.
    group_of: Vec<usize>,
    /// One per buffer of the store.
    buffers: Vec<Flat>,
    /// The parameters Muon orthogonalises (empty unless `optimizer=muon`), in parameter order.
    muon: Vec<MuonMatrix>,
    /// The dtype Newton–Schulz multiplies in: the model's matrix products' (bf16 under
    /// bf16-mixed, as the reference does; f32 otherwise).
    ns_dtype: DType,
    steps: u64,
}

impl Optimizer {
    /// `options[i]` belongs to the store's parameter `i`.
    pub fn new(config: &OptimConfig, store: &ParamStore, options: Vec<ParamOptions>) -> Result<Self> {
        let params = store.params();
        if params.is_empty() {
            candle_core::bail!("the model has no parameters");
        }
        let mut groups: Vec<Group> = Vec::new();
        let mut muon = Vec::new();
        for (i, (p, o)) in params.iter().zip(&options).enumerate() {
            let dims = p.var.dims();
            let on = config.optimizer == OptimizerKind::Muon
                && o.muon.unwrap_or_else(|| config.orthogonalised(&p.name, dims));
            if !on {
                continue;
            }
            let &[rows, cols] = dims else {
                candle_core::bail!("Muon orthogonalises matrices; `{}` has shape {dims:?}", p.name)
            };
            let blocks = o.blocks.unwrap_or_else(|| OptimConfig::stacked_blocks(&p.name, dims));
            if blocks == 0 || rows % blocks != 0 {
                candle_core::bail!("`{}` ({rows} × {cols}) does not split into {blocks} blocks", p.name);
            }
            muon.push(MuonMatrix { param: i, blocks, rows: rows / blocks, cols });
        }
        let ns_dtype =
            if params.iter().any(|p| p.compute.dtype() == DType::BF16) { DType::BF16 } else { DType::F32 };
        let group_of = params
            .iter()
            .zip(&options)
            .map(|(p, o)| {
                let g = Group {
                    decay: o.weight_decay.unwrap_or_else(|| config.decays(&p.name, p.var.dims())),
                    lr_scale: o.lr_scale,
                };
                groups.iter().position(|x| *x == g).unwrap_or_else(|| {
                    groups.push(g);
                    groups.len() - 1
                })
            })
            .collect();
        let buffers = store
            .masters()
            .into_iter()
            .enumerate()
            .map(|(b, masters)| {
                let state = (0..config.slots().len())
                    .map(|_| Var::from_tensor(&masters.zeros_like()?))
                    .collect::<Result<_>>()?;
                let members: Vec<usize> =
                    params.iter().enumerate().filter(|(_, p)| p.buffer == b).map(|(i, _)| i).collect();
                let muon_elements = (!muon.is_empty())
                    .then(|| {
                        let mask: Vec<u8> = members
                            .iter()
                            .flat_map(|&i| {
                                let on = muon.iter().any(|m: &MuonMatrix| m.param == i);
                                std::iter::repeat_n(u8::from(on), params[i].elem_count())
                            })
                            .collect();
                        Tensor::new(mask.as_slice(), masters.device())
                    })
                    .transpose()?;
                Ok(Flat { masters, members, state, element_groups: None, muon_elements })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { config: config.clone(), params, groups, group_of, buffers, muon, ns_dtype, steps: 0 })
    }

    /// The names of parameter `i`'s state, slot by slot (a Muon matrix has one).
    fn slot_names(&self, i: usize) -> &'static [&'static str] {
        if self.muon.iter().any(|m| m.param == i) {
            &[MUON_SLOT]
        } else {
            self.config.slots()
        }
    }

    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// How each parameter is updated, in the model's order, as plugin-api's `parameters` lists
    /// it: `{"name", "shape", "decay", "rule", "lr_scale"}`.
    pub fn treatment(&self) -> Vec<serde_json::Value> {
        self.params
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let group = self.groups[self.group_of[i]];
                let muon = self.muon.iter().any(|m| m.param == i);
                let rule = match self.config.optimizer {
                    OptimizerKind::Muon if !muon => "adamw",
                    kind => kind.as_str(),
                };
                let lr_scale = if muon { group.lr_scale * self.config.muon_lr_scale } else { group.lr_scale };
                serde_json::json!({
                    "name": p.name, "shape": p.var.dims(), "decay": group.decay, "rule": rule, "lr_scale": lr_scale,
                })
            })
            .collect()
    }

    pub fn kind(&self) -> OptimizerKind {
        self.config.optimizer
    }

    /// Whether gradients should be handed over gathered ([`gather`](Self::gather), summed
    /// across micro-batches, then [`step_gathered`](Self::step_gathered)): everywhere but the
    /// CPU's fused AdamW, which reads each parameter's own f32 gradient.
    pub fn takes_gathered_gradients(&self) -> bool {
        !(self.config.optimizer == OptimizerKind::AdamW
            && self.params.iter().all(|p| p.compute.dtype() == DType::F32)
            && fused::applies(&self.buffers.iter().map(|b| b.masters.as_tensor()).collect::<Vec<_>>()))
    }

    /// Every parameter's gradient gathered into one f32 tensor per buffer, in the masters'
    /// layout (zeros where a parameter has none): one op to gather and one to cast per buffer.
    pub fn gather(&self, grads: &[Option<Tensor>]) -> Result<Vec<Tensor>> {
        if grads.len() != self.params.len() {
            candle_core::bail!("{} gradients for {} parameters", grads.len(), self.params.len());
        }
        self.buffers
            .iter()
            .map(|b| {
                let device = b.masters.device();
                let dtype =
                    b.members.iter().find_map(|&i| grads[i].as_ref()).map_or(DType::F32, Tensor::dtype);
                let parts = b
                    .members
                    .iter()
                    .map(|&i| match &grads[i] {
                        Some(g) => g.flatten_all(),
                        None => Tensor::zeros(self.params[i].elem_count(), dtype, device),
                    })
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&parts, 0)?.to_dtype(DType::F32)
            })
            .collect()
    }

    /// Clips the gradients to `grad_clip` and applies one update; `grads[i]` belongs to parameter
    /// `i` (`None`: that parameter is left unchanged, its state too). Returns the global norm
    /// before clipping as a scalar tensor on the device, unread.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<Tensor> {
        self.step_with(grads, lr, true)
    }

    /// `allow_fused: false` takes the flat tensor-op path every device has (tests compare the two).
    fn step_with(&mut self, grads: &[Option<Tensor>], lr: f64, allow_fused: bool) -> Result<Tensor> {
        let fused =
            allow_fused && self.config.optimizer == OptimizerKind::AdamW && self.buffers.len() == 1 && {
                let mut all: Vec<&Tensor> = vec![self.buffers[0].masters.as_tensor()];
                all.extend(self.buffers[0].state.iter().map(|s| s.as_tensor()));
                all.extend(grads.iter().flatten());
                fused::applies(&all)
            };
        if !fused {
            let present: Vec<bool> = grads.iter().map(Option::is_some).collect();
            return self.step_gathered(&self.gather(grads)?, &present, lr);
        }
        if grads.len() != self.params.len() {
            candle_core::bail!("{} gradients for {} parameters", grads.len(), self.params.len());
        }
        self.steps += 1;
        let norm = grad_norm(grads)?;
        self.adamw_fused(grads, lr, clip_factor(norm, self.config.grad_clip) as f32)?;
        Tensor::new(norm, &Device::Cpu)
    }

    /// The settings of each group at this step, as `f(group)`, one value per element of buffer
    /// `b` (gathered on the device from a table of one value per group).
    fn per_element(&mut self, b: usize, f: impl Fn(&Group) -> f64) -> Result<Tensor> {
        let flat = &self.buffers[b];
        let device = flat.masters.device().clone();
        let table: Vec<f32> = self.groups.iter().map(|g| f(g) as f32).collect();
        let table = Tensor::new(table.as_slice(), &device)?;
        if self.groups.len() == 1 {
            return table.broadcast_as(flat.masters.shape());
        }
        if flat.element_groups.is_none() {
            let index: Vec<u32> = flat
                .members
                .iter()
                .flat_map(|&i| std::iter::repeat_n(self.group_of[i] as u32, self.params[i].elem_count()))
                .collect();
            self.buffers[b].element_groups = Some(Tensor::new(index.as_slice(), &device)?);
        }
        table.index_select(self.buffers[b].element_groups.as_ref().expect("built above"), 0)
    }

    /// One update as a fixed number of ops per buffer (any device): the gathered gradients
    /// clipped by a factor computed on the device, the rule applied with each group's settings.
    /// `present[i]`: parameter `i` had a gradient (the others keep their values and state, as
    /// torch skips them). Returns the global norm before clipping, unread.
    pub fn step_gathered(&mut self, gathered: &[Tensor], present: &[bool], lr: f64) -> Result<Tensor> {
        if gathered.len() != self.buffers.len() || present.len() != self.params.len() {
            candle_core::bail!("{} gathered gradients for {} buffers", gathered.len(), self.buffers.len());
        }
        for (g, b) in gathered.iter().zip(&self.buffers) {
            if g.dims1()? != b.masters.elem_count() {
                candle_core::bail!(
                    "a gathered gradient of {:?} for {} elements",
                    g.dims(),
                    b.masters.elem_count()
                );
            }
        }
        self.steps += 1;
        let c = self.config.clone();
        let (norm, gathered) = if fused::applies(&gathered.iter().collect::<Vec<_>>()) {
            // On the CPU the norm is summed in f64, parameter by parameter, as it always was.
            let mut squares = 0.0;
            for (g, b) in gathered.iter().zip(&self.buffers) {
                for &i in &b.members {
                    let p = &self.params[i];
                    squares += fused::sum_of_squares(&g.narrow(0, p.offset, p.elem_count())?)?;
                }
            }
            let norm = squares.sqrt();
            let factor = clip_factor(norm, c.grad_clip);
            let scaled = gathered
                .iter()
                .map(|g| if factor == 1.0 { Ok(g.clone()) } else { g * factor })
                .collect::<Result<Vec<_>>>()?;
            (Tensor::new(norm, &Device::Cpu)?, scaled)
        } else {
            let squares = gathered.iter().map(|g| g.sqr()?.sum_all()).collect::<Result<Vec<_>>>()?;
            let norm = Tensor::stack(&squares, 0)?.sum_all()?.sqrt()?;
            let scaled = if c.grad_clip > 0.0 {
                // torch.nn.utils.clip_grad_norm_: g · max_norm / (norm + 1e−6) when norm > max_norm.
                let ratio = ((&norm + 1e-6)?.recip()? * c.grad_clip)?;
                let one = Tensor::new(1f32, norm.device())?;
                let factor = norm.gt(c.grad_clip)?.where_cond(&ratio, &one)?;
                gathered.iter().map(|g| g.broadcast_mul(&factor)).collect::<Result<Vec<_>>>()?
            } else {
                gathered.to_vec()
            };
            (norm, scaled)
        };
        for (b, g) in gathered.iter().enumerate() {
            self.update_buffer(b, g, present, lr)?;
        }
        Ok(norm)
    }

    /// The rule on buffer `b` with its clipped gradient `g`.
    fn update_buffer(&mut self, b: usize, g: &Tensor, present: &[bool], lr: f64) -> Result<()> {
        let c = self.config.clone();
        let t = self.steps as i32;
        let weight_decay = c.weight_decay;
        let lr_of = |group: &Group| lr * group.lr_scale;
        let wd_of = move |group: &Group| if group.decay { weight_decay } else { 0.0 };
        let theta = self.buffers[b].masters.as_tensor().clone();
        let mut slots: Vec<Tensor> = self.buffers[b].state.iter().map(|s| s.as_tensor().clone()).collect();
        let new = match c.optimizer {
            // Loshchilov & Hutter, "Decoupled Weight Decay Regularization", Algorithm 2.
            OptimizerKind::AdamW | OptimizerKind::Muon => {
                let keep = self.per_element(b, |g| 1.0 - lr_of(g) * wd_of(g))?;
                let step_size = self.per_element(b, |g| lr_of(g) / (1.0 - c.beta1.powi(t)))?;
                let m = ((&slots[0] * c.beta1)? + (g * (1.0 - c.beta1))?)?;
                let v = ((&slots[1] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
                let denom = ((v.sqrt()? / (1.0 - c.beta2.powi(t)).sqrt())? + c.eps)?;
                let new = ((&theta * keep)? - (m.div(&denom)? * step_size)?)?;
                slots = vec![m, v];
                new
            }
            // Duchi et al. 2011, as torch.optim.Adagrad (lr_decay 0, initial sum 0).
            OptimizerKind::Adagrad => {
                let (lr, wd) = (self.per_element(b, lr_of)?, self.per_element(b, wd_of)?);
                let g = (g + (&theta * wd)?)?;
                let sum = (&slots[0] + g.sqr()?)?;
                let new = (&theta - ((g / (sum.sqrt()? + c.eps)?)? * lr)?)?;
                slots = vec![sum];
                new
            }
            OptimizerKind::Sgd => {
                let (lr, wd) = (self.per_element(b, lr_of)?, self.per_element(b, wd_of)?);
                let mut g = (g + (&theta * wd)?)?;
                if c.momentum != 0.0 {
                    let buf = ((&slots[0] * c.momentum)? + &g)?;
                    slots = vec![buf.clone()];
                    g = buf;
                }
                (&theta - (g * lr)?)?
            }
        };
        let (new, slots) = if c.optimizer == OptimizerKind::Muon {
            self.muon_update(b, g, &theta, new, slots, lr)?
        } else {
            (new, slots)
        };
        let flat = &self.buffers[b];
        let keep_old = |new: Tensor, old: &Tensor| -> Result<Tensor> {
            if flat.members.iter().all(|&i| present[i]) {
                return Ok(new);
            }
            // Parameters without a gradient keep their values and their state (as torch skips them).
            let has: Vec<u8> = flat
                .members
                .iter()
                .flat_map(|&i| std::iter::repeat_n(u8::from(present[i]), self.params[i].elem_count()))
                .collect();
            Tensor::new(has.as_slice(), old.device())?.where_cond(&new, old)
        };
        let new = keep_old(new, &theta)?;
        let slots = slots
            .into_iter()
            .zip(&flat.state)
            .map(|(s, old)| keep_old(s, old.as_tensor()))
            .collect::<Result<Vec<_>>>()?;
        flat.masters.set(&new)?;
        for (var, value) in flat.state.iter().zip(&slots) {
            var.set(value)?;
        }
        Ok(())
    }

    /// Muon's update of the matrices of buffer `b` in place of AdamW's (`adamw`: the buffer's
    /// new values, `slots`: its new state), as `torch.optim.Muon`: B ← μB + (1 − μ)G,
    /// U = (1 − μ)G + μB (EXPERIMENTS.md's B ← μB + G, U = G + μB scaled by 1 − μ, which the
    /// normalisation before Newton–Schulz removes), X = NS₅(U / ‖U‖_F), θ ← θ(1 − lr·wd) −
    /// lr·√max(1, rows/cols)·X. The matrices of one shape are orthogonalised as one batch.
    fn muon_update(
        &self,
        b: usize,
        g: &Tensor,
        theta: &Tensor,
        adamw: Tensor,
        slots: Vec<Tensor>,
        lr: f64,
    ) -> Result<(Tensor, Vec<Tensor>)> {
        let c = &self.config;
        let flat = &self.buffers[b];
        let matrices: Vec<MuonMatrix> =
            self.muon.iter().copied().filter(|m| self.params[m.param].buffer == b).collect();
        if matrices.is_empty() {
            return Ok((adamw, slots));
        }
        let mu = c.muon_momentum;
        let old_momentum = flat.state[0].as_tensor();
        let momentum = ((old_momentum * mu)? + (g * (1.0 - mu))?)?;
        let update = ((g * (1.0 - mu))? + (&momentum * mu)?)?;
        // Each matrix's blocks, batched by block shape.
        let mut shapes: Vec<(usize, usize)> = Vec::new();
        for m in &matrices {
            if !shapes.contains(&(m.rows, m.cols)) {
                shapes.push((m.rows, m.cols));
            }
        }
        // Each Muon matrix's orthogonalised update, by parameter.
        let mut orthogonal: HashMap<usize, (MuonMatrix, Tensor)> = HashMap::new();
        for &(rows, cols) in &shapes {
            let members: Vec<&MuonMatrix> =
                matrices.iter().filter(|m| (m.rows, m.cols) == (rows, cols)).collect();
            let blocks = members
                .iter()
                .map(|m| {
                    let p = &self.params[m.param];
                    update.narrow(0, p.offset, p.elem_count())?.reshape((m.blocks, rows, cols))
                })
                .collect::<Result<Vec<_>>>()?;
            let x = newton_schulz(&Tensor::cat(&blocks, 0)?, self.ns_dtype)?;
            let mut at = 0;
            for m in members {
                orthogonal.insert(m.param, (*m, x.narrow(0, at, m.blocks)?.flatten_all()?));
                at += m.blocks;
            }
        }
        // The buffer reassembled in layout order: AdamW's values but for the Muon matrices.
        let mut pieces = Vec::with_capacity(flat.members.len());
        for &i in &flat.members {
            let p = &self.params[i];
            let piece = match orthogonal.get(&i) {
                Some((m, x)) => {
                    let lr = lr * c.muon_lr_scale * self.groups[self.group_of[i]].lr_scale;
                    let wd = if self.groups[self.group_of[i]].decay { c.muon_weight_decay } else { 0.0 };
                    let scale = (m.rows as f64 / m.cols as f64).max(1.0).sqrt();
                    let w = theta.narrow(0, p.offset, p.elem_count())?;
                    ((w * (1.0 - lr * wd))? - (x * (lr * scale))?)?
                }
                None => adamw.narrow(0, p.offset, p.elem_count())?,
            };
            pieces.push(piece);
        }
        let new = Tensor::cat(&pieces, 0)?;
        let is_muon = flat.muon_elements.as_ref().expect("built with the Muon matrices");
        let slots = vec![
            is_muon.where_cond(&momentum, &slots[0])?,
            is_muon.where_cond(flat.state[1].as_tensor(), &slots[1])?,
        ];
        Ok((new, slots))
    }

    /// AdamW on the CPU: one fused pass per parameter over its slices of θ, m and v (one buffer).
    fn adamw_fused(&self, grads: &[Option<Tensor>], lr: f64, grad_scale: f32) -> Result<()> {
        let c = &self.config;
        let t = self.steps as i32;
        let flat = &self.buffers[0];
        let (m, v) = (flat.state[0].as_tensor(), flat.state[1].as_tensor());
        let work: Vec<(usize, usize, &Tensor, fused::Step)> = self
            .params
            .iter()
            .zip(grads)
            .zip(&self.group_of)
            .filter_map(|((p, g), &group)| {
                let group = self.groups[group];
                let lr = lr * group.lr_scale;
                let wd = if group.decay { c.weight_decay } else { 0.0 };
                g.as_ref()
                    .map(|g| (p.offset, p.elem_count(), g, fused::Step::adamw(c, lr, wd, t, grad_scale)))
            })
            .collect();
        fused::adamw(flat.masters.as_tensor(), m, v, &work)
    }

    /// Every state tensor, named `optim.<param>.<slot>`.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, p) in self.params.iter().enumerate() {
            for (slot, buffer) in self.slot_names(i).iter().zip(&self.buffers[p.buffer].state) {
                let view = buffer.as_tensor().narrow(0, p.offset, p.elem_count())?.reshape(p.var.shape())?;
                out.push((format!("optim.{}.{slot}", p.name), view));
            }
        }
        Ok(out)
    }

    /// Restores what [`state`](Self::state) gave and the number of steps taken.
    pub fn load_state(&mut self, tensors: &HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for flat in &self.buffers {
            for (s, buffer) in flat.state.iter().enumerate() {
                let mut parts = Vec::with_capacity(flat.members.len());
                for &i in &flat.members {
                    let p = &self.params[i];
                    let Some(slot) = self.slot_names(i).get(s) else {
                        // A slot this parameter does not use (Muon's slot 1).
                        parts.push(Tensor::zeros(p.elem_count(), DType::F32, &Device::Cpu)?);
                        continue;
                    };
                    let name = format!("optim.{}.{slot}", p.name);
                    let v = tensors.get(&name).ok_or_else(|| {
                        candle_core::Error::Msg(format!(
                            "missing optimiser state `{name}` (was the checkpoint written with another optimizer?)"
                        ))
                    })?;
                    if v.shape() != p.var.shape() {
                        candle_core::bail!(
                            "optimiser state `{name}` has shape {:?}, expected {:?}",
                            v.dims(),
                            p.var.dims()
                        );
                    }
                    parts.push(v.flatten_all()?.to_dtype(DType::F32)?);
                }
                buffer.set(&Tensor::cat(&parts, 0)?.to_device(buffer.device())?)?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// AdamW on the CPU in one pass and no allocation, instead of a dozen tensor ops with a fresh
/// buffer each: the same arithmetic as the flat path above, each of θ, m, v and g read once.
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

    /// One parameter's AdamW constants at one step (Loshchilov & Hutter, Algorithm 2).
    #[derive(Clone, Copy)]
    pub struct Step {
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

    impl Step {
        pub fn adamw(c: &OptimConfig, lr: f64, wd: f64, t: i32, grad_scale: f32) -> Self {
            Self {
                beta1: c.beta1 as f32,
                beta2: c.beta2 as f32,
                grad_scale,
                keep: (1.0 - lr * wd) as f32,
                step_size: (lr / (1.0 - c.beta1.powi(t))) as f32,
                inv_sqrt_bias2: (1.0 / (1.0 - c.beta2.powi(t)).sqrt()) as f32,
                eps: c.eps as f32,
            }
        }
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

    /// Updates the parameters at (offset, length) of the buffers θ, m and v with their gradients.
    pub fn adamw(
        theta: &Tensor,
        m: &Tensor,
        v: &Tensor,
        work: &[(usize, usize, &Tensor, Step)],
    ) -> Result<()> {
        let grads = work.iter().map(|(_, _, g, _)| g.storage_and_layout()).collect::<Vec<_>>();
        let grads = grads
            .iter()
            .map(|(storage, layout)| match &**storage {
                candle_core::Storage::Cpu(cpu) => f32s(cpu, layout, "adamw"),
                _ => candle_core::bail!("adamw: not a CPU tensor"),
            })
            .collect::<Result<Vec<&[f32]>>>()?;
        with_mut(m, |m| {
            with_mut(v, |v| {
                with_mut(theta, |theta| {
                    for (&(offset, len, _, step), g) in work.iter().zip(&grads) {
                        let range = offset..offset + len;
                        if g.len() != len
                            || range.end > theta.len()
                            || theta.len() != m.len()
                            || m.len() != v.len()
                        {
                            candle_core::bail!("adamw: parameter, gradient and state sizes differ");
                        }
                        let (theta, m, v) = (&mut theta[range.clone()], &mut m[range.clone()], &mut v[range]);
                        theta
                            .par_chunks_mut(CHUNK)
                            .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
                            .zip(g.par_chunks(CHUNK))
                            .for_each(|((theta, (m, v)), g)| adamw_chunk(theta, m, v, g, step));
                    }
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

/// The orthogonalised `u` (a batch of matrices, f32): five quintic Newton–Schulz steps on
/// `X = U / max(‖U‖_F, 1e−7)`, `A = XXᵀ; X ← aX + (bA + cA²)X`, on the wide orientation (a tall
/// matrix is transposed first), multiplied in `dtype` (Jordan 2024; torch.optim.Muon).
fn newton_schulz(u: &Tensor, dtype: DType) -> Result<Tensor> {
    let (_, rows, cols) = u.dims3()?;
    let tall = rows > cols;
    let u = if tall { u.transpose(1, 2)?.contiguous()? } else { u.clone() };
    // Rounded to `dtype` first and normalised after, as the reference does.
    let u = u.to_dtype(dtype)?.to_dtype(DType::F32)?;
    let norm = u.sqr()?.sum_keepdim((1, 2))?.sqrt()?.clamp(1e-7, f64::INFINITY)?;
    let mut x = u.broadcast_div(&norm)?.to_dtype(dtype)?;
    let (a, b, c) = NS_COEFFICIENTS;
    // The products in `dtype`, each sum in f32 and rounded once, as torch's addmm does.
    let f32 = |t: Tensor| t.to_dtype(DType::F32);
    for _ in 0..NS_STEPS {
        let gram = x.matmul(&x.t()?)?;
        let poly = ((f32(gram.clone())? * b)? + (f32(gram.matmul(&gram)?)? * c)?)?.to_dtype(dtype)?;
        x = ((f32(x.clone())? * a)? + f32(poly.matmul(&x)?)?)?.to_dtype(dtype)?;
    }
    let x = x.to_dtype(DType::F32)?;
    if tall {
        x.transpose(1, 2)?.contiguous()
    } else {
        Ok(x)
    }
}

/// Global L2 norm of CPU f32 gradients, summed in f64 per gradient without a squared copy.
fn grad_norm(grads: &[Option<Tensor>]) -> Result<f64> {
    let mut total = 0f64;
    for g in grads.iter().flatten() {
        total += fused::sum_of_squares(g)?;
    }
    Ok(total.sqrt())
}

/// What clipping multiplies the gradients by: `max_norm / (norm + 1e−6)` when the norm exceeds
/// `max_norm`, else 1 (`max_norm` 0: never clips), as `torch.nn.utils.clip_grad_norm_`.
fn clip_factor(norm: f64, max_norm: f64) -> f64 {
    if max_norm > 0.0 && norm > max_norm {
        max_norm / (norm + 1e-6)
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    //! Each rule against a scalar reference written from the papers' / PyTorch's formulas, in f64,
    //! and the flat optimiser against the per-parameter one it replaced, bit for bit.
    use super::*;
    use candle_nn::Init;

    const THETA0: [f64; 3] = [0.5, -1.0, 2.0];
    const GRADS: [[f64; 3]; 3] = [[0.1, -0.2, 0.3], [0.05, 0.4, -0.1], [-0.3, 0.2, 0.0]];

    /// A store holding one parameter per (name, values), each a 1 × n matrix (so it decays).
    fn store(params: &[(&str, &[f32])]) -> ParamStore {
        let store = ParamStore::new(0);
        let vb = store.var_builder(DType::F32, &Device::Cpu);
        for (name, values) in params {
            vb.get_with_hints((1, values.len()), name, Init::Const(0.0)).unwrap();
        }
        for (p, (_, values)) in store.params().iter().zip(params) {
            p.var.set(&Tensor::new(*values, &Device::Cpu).unwrap().unsqueeze(0).unwrap()).unwrap();
        }
        store
    }

    fn values(store: &ParamStore) -> Vec<Vec<f32>> {
        store.params().iter().map(|p| p.var.as_tensor().flatten_all().unwrap().to_vec1().unwrap()).collect()
    }

    fn run(config: &OptimConfig, name: &str, lr: f64) -> Vec<f64> {
        let fused = run_with(config, name, lr, true);
        let flat = run_with(config, name, lr, false);
        close(&fused, &flat);
        fused
    }

    fn run_with(config: &OptimConfig, name: &str, lr: f64, allow_fused: bool) -> Vec<f64> {
        let theta0 = THETA0.map(|x| x as f32);
        let store = store(&[(name, &theta0)]);
        let mut opt = Optimizer::new(config, &store, vec![ParamOptions::default()]).unwrap();
        for g in GRADS {
            let g = Tensor::new(&g.map(|x| x as f32), &Device::Cpu).unwrap();
            opt.step_with(&[Some(g)], lr, allow_fused).unwrap();
        }
        values(&store)[0].iter().map(|&x| f64::from(x)).collect()
    }

    fn close(a: &[f64], b: &[f64]) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() < 1e-5, "{a:?} vs {b:?}");
        }
    }

    #[test]
    fn adamw_matches_reference() {
        let cfg = OptimConfig { grad_clip: 0.0, ..OptimConfig::default() };
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
        let no_decay = run(&cfg, "transformer.wpe.weight", lr);
        assert!((no_decay[0] - theta[0]).abs() > 1e-6);
    }

    #[test]
    fn matrices_decay_and_vectors_do_not() {
        let cfg = OptimConfig::default();
        assert!(cfg.decays("transformer.h.0.mlp.c_fc.weight", &[8, 2]));
        assert!(!cfg.decays("transformer.h.0.mlp.c_fc.bias", &[8]));
        assert!(!cfg.decays("transformer.h.0.attn.q_norm.weight", &[4]));
        assert!(!cfg.decays("transformer.wpe.weight", &[16, 2]), "listed in no_decay");
        let muon = OptimConfig { optimizer: OptimizerKind::Muon, ..cfg };
        assert!(muon.orthogonalised("transformer.h.0.mlp.c_fc.weight", &[8, 2]));
        assert!(!muon.orthogonalised("transformer.wte.weight", &[64, 2]), "embeddings stay on AdamW");
        assert!(!muon.orthogonalised("transformer.h.0.ln_1.weight", &[2]));
    }

    #[test]
    fn adagrad_matches_reference() {
        let cfg = OptimConfig {
            optimizer: OptimizerKind::Adagrad,
            weight_decay: 0.0,
            eps: 1e-10,
            grad_clip: 0.0,
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
            grad_clip: 0.0,
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
        let cfg = OptimConfig {
            optimizer: OptimizerKind::Sgd,
            weight_decay: 0.5,
            grad_clip: 0.0,
            ..OptimConfig::default()
        };
        let store = store(&[("w", &[1.0]), ("half", &[1.0]), ("h.bias", &[1.0])]);
        let options = vec![
            ParamOptions::default(),
            ParamOptions { lr_scale: 0.5, weight_decay: Some(false), ..ParamOptions::default() },
            ParamOptions { lr_scale: 1.0, weight_decay: Some(true), ..ParamOptions::default() },
        ];
        let mut opt = Optimizer::new(&cfg, &store, options).unwrap();
        let g = || Some(Tensor::new(&[1f32], &Device::Cpu).unwrap());
        opt.step(&[g(), g(), g()], 0.1).unwrap();
        let v: Vec<f32> = values(&store).iter().map(|v| v[0]).collect();
        // θ − lr·(g + wd·θ): decayed 1 − 0.1·1.5; half rate, no decay 1 − 0.05·1; bias forced to decay.
        assert!(
            (v[0] - 0.85).abs() < 1e-6 && (v[1] - 0.95).abs() < 1e-6 && (v[2] - 0.85).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn clipping_scales_to_max_norm_and_reports_the_norm_before() {
        // SGD at lr 1: the change of θ is the clipped gradient.
        let cfg = OptimConfig {
            optimizer: OptimizerKind::Sgd,
            weight_decay: 0.0,
            grad_clip: 1.0,
            ..OptimConfig::default()
        };
        for allow_fused in [true, false] {
            let store = store(&[("a", &[0.0, 0.0]), ("b", &[0.0])]);
            let mut opt = Optimizer::new(&cfg, &store, vec![ParamOptions::default(); 2]).unwrap();
            let g = |v: &[f32]| Some(Tensor::new(v, &Device::Cpu).unwrap());
            let norm = opt.step_with(&[g(&[3.0, 0.0]), g(&[4.0])], 1.0, allow_fused).unwrap();
            let norm = norm.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap();
            assert!((norm - 5.0).abs() < 1e-6);
            let v = values(&store);
            assert!((v[0][0] + 0.6).abs() < 1e-5 && (v[1][0] + 0.8).abs() < 1e-5, "{v:?}");
        }
    }

    /// The per-parameter optimiser this one replaced, as it was: a dozen candle ops per
    /// parameter, clipping by a factor computed on the host.
    fn per_parameter_reference(
        c: &OptimConfig,
        theta: &mut [Vec<f32>],
        state: &mut [Vec<Vec<f32>>],
        grads: &[Vec<f32>],
        groups: &[(bool, f64)],
        lr: f64,
        t: i32,
    ) {
        let dev = Device::Cpu;
        let tensors: Vec<Option<Tensor>> =
            grads.iter().map(|g| Some(Tensor::new(g.as_slice(), &dev).unwrap())).collect();
        let scale = clip_factor(grad_norm(&tensors).unwrap(), c.grad_clip);
        for i in 0..theta.len() {
            if c.optimizer == OptimizerKind::AdamW {
                // The fused kernel's arithmetic, element by element.
                let (decay, lr_scale) = groups[i];
                let lr = lr * lr_scale;
                let wd = if decay { c.weight_decay } else { 0.0 };
                let (b1, b2) = (c.beta1 as f32, c.beta2 as f32);
                let keep = (1.0 - lr * wd) as f32;
                let step_size = (lr / (1.0 - c.beta1.powi(t))) as f32;
                let inv = (1.0 / (1.0 - c.beta2.powi(t)).sqrt()) as f32;
                for j in 0..theta[i].len() {
                    let g = grads[i][j] * scale as f32;
                    let m = b1 * state[i][0][j] + (1.0 - b1) * g;
                    let v = b2 * state[i][1][j] + (1.0 - b2) * (g * g);
                    (state[i][0][j], state[i][1][j]) = (m, v);
                    theta[i][j] = keep * theta[i][j] - step_size * m / (v.sqrt() * inv + c.eps as f32);
                }
                continue;
            }
            let th = Tensor::new(theta[i].as_slice(), &dev).unwrap();
            let g = (Tensor::new(grads[i].as_slice(), &dev).unwrap() * scale).unwrap();
            let (decay, lr_scale) = groups[i];
            let wd = if decay { c.weight_decay } else { 0.0 };
            let lr = lr * lr_scale;
            let slot = |s: usize| Tensor::new(state[i][s].as_slice(), &dev).unwrap();
            let with_l2 = |g: &Tensor| if wd == 0.0 { g.clone() } else { (g + (&th * wd).unwrap()).unwrap() };
            let (new, slots): (Tensor, Vec<Tensor>) = match c.optimizer {
                OptimizerKind::AdamW | OptimizerKind::Muon => unreachable!("handled above"),
                OptimizerKind::Adagrad => {
                    let g = with_l2(&g);
                    let sum = (slot(0) + g.sqr().unwrap()).unwrap();
                    let new = (&th - ((g / (sum.sqrt().unwrap() + c.eps).unwrap()).unwrap() * lr).unwrap())
                        .unwrap();
                    (new, vec![sum])
                }
                OptimizerKind::Sgd => {
                    let buf = ((slot(0) * c.momentum).unwrap() + with_l2(&g)).unwrap();
                    ((&th - (&buf * lr).unwrap()).unwrap(), vec![buf])
                }
            };
            theta[i] = new.to_vec1().unwrap();
            for (s, v) in slots.iter().enumerate() {
                state[i][s] = v.to_vec1().unwrap();
            }
        }
    }

    #[test]
    fn the_flat_optimizer_equals_the_per_parameter_one_bit_for_bit() {
        let values_of = |n: usize, seed: u64| crate::kernels::testing::values(n, seed, 1.0);
        let sizes = [(4usize, "h.0.w"), (7, "h.0.bias"), (40_000, "h.1.w"), (3, "wpe")];
        let groups = [(true, 1.0), (false, 1.0), (true, 0.5), (false, 1.0)];
        for optimizer in [OptimizerKind::AdamW, OptimizerKind::Adagrad, OptimizerKind::Sgd] {
            let c = OptimConfig { optimizer, momentum: 0.9, grad_clip: 0.5, ..OptimConfig::default() };
            let init: Vec<Vec<f32>> = sizes.iter().map(|&(n, _)| values_of(n, n as u64)).collect();
            let named: Vec<(&str, &[f32])> =
                sizes.iter().zip(&init).map(|((_, name), v)| (*name, v.as_slice())).collect();
            let store = store(&named);
            let options = groups
                .iter()
                .map(|&(decay, lr_scale)| ParamOptions {
                    lr_scale,
                    weight_decay: Some(decay),
                    ..ParamOptions::default()
                })
                .collect();
            let mut opt = Optimizer::new(&c, &store, options).unwrap();
            let mut theta = init.clone();
            let mut state: Vec<Vec<Vec<f32>>> =
                init.iter().map(|v| vec![vec![0.0; v.len()]; c.slots().len()]).collect();
            for t in 1..=3 {
                let grads: Vec<Vec<f32>> =
                    sizes.iter().map(|&(n, _)| values_of(n, 100 * t + n as u64)).collect();
                let tensors: Vec<Option<Tensor>> =
                    grads.iter().map(|g| Some(Tensor::new(g.as_slice(), &Device::Cpu).unwrap())).collect();
                opt.step(&tensors, 3e-3).unwrap();
                per_parameter_reference(&c, &mut theta, &mut state, &grads, &groups, 3e-3, t as i32);
            }
            let bits = |v: &[Vec<f32>]| v.iter().flatten().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert!(bits(&values(&store)) == bits(&theta), "{optimizer}: the parameters differ");
            let saved: Vec<Vec<f32>> = opt
                .state()
                .unwrap()
                .iter()
                .map(|(_, t)| t.flatten_all().unwrap().to_vec1().unwrap())
                .collect();
            assert!(bits(&saved) == bits(&state.concat()), "{optimizer}: the state differs");
        }
    }

    #[test]
    fn the_flat_path_matches_the_fused_one_and_skips_parameters_without_a_gradient() {
        let cfg = OptimConfig::default();
        let results: Vec<Vec<Vec<f32>>> = [true, false]
            .iter()
            .map(|&allow_fused| {
                let store = store(&[("w", &[1.0; 5000]), ("frozen", &[2.0; 3]), ("h.bias", &[0.5; 7])]);
                let mut opt = Optimizer::new(&cfg, &store, vec![ParamOptions::default(); 3]).unwrap();
                let g = |n: usize| {
                    Some(
                        Tensor::new(
                            crate::kernels::testing::values(n, n as u64, 1.0).as_slice(),
                            &Device::Cpu,
                        )
                        .unwrap(),
                    )
                };
                for _ in 0..3 {
                    opt.step_with(&[g(5000), None, g(7)], 1e-2, allow_fused).unwrap();
                }
                values(&store)
            })
            .collect();
        assert_eq!(results[1][1], vec![2.0; 3], "no gradient: unchanged");
        for (a, b) in results[0].iter().flatten().zip(results[1].iter().flatten()) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }

    #[test]
    fn weight_decay_shrinks_the_weights_under_bf16_mixed_precision_exactly_as_in_f32() {
        // With zero gradients AdamW is pure decay: θ ← θ·(1 − lr·wd). In bf16, 1 − 1e−3 rounds
        // to 1, so a pure-bf16 optimiser never decays; the f32 masters of bf16-mixed do.
        let cfg = OptimConfig { grad_clip: 0.0, ..OptimConfig::default() };
        let (lr, steps) = (1e-2, 20);
        let masters = |compute: DType| {
            let store = ParamStore::new(3);
            let vb = store.var_builder(compute, &Device::Cpu);
            vb.get_with_hints((8, 8), "w", Init::Randn { mean: 0.0, stdev: 1.0 }).unwrap();
            assert_eq!(store.mixed_precision(), compute == DType::BF16);
            let mut opt = Optimizer::new(&cfg, &store, vec![ParamOptions::default()]).unwrap();
            let initial = values(&store)[0].clone();
            for _ in 0..steps {
                let zero = Tensor::zeros((8, 8), compute, &Device::Cpu).unwrap();
                opt.step(&[Some(zero)], lr).unwrap();
                store.sync_compute().unwrap();
            }
            let compute = store.params()[0]
                .compute
                .to_dtype(DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            (initial, values(&store)[0].clone(), compute)
        };
        let (initial, f32_run, _) = masters(DType::F32);
        let (_, mixed, compute) = masters(DType::BF16);
        assert_eq!(mixed, f32_run, "the masters decay exactly as in f32");
        let keep = ((1.0 - lr * cfg.weight_decay) as f32).powi(steps);
        for ((a, b), c) in initial.iter().zip(&mixed).zip(&compute) {
            assert!((a * keep - b).abs() <= 1e-6 * a.abs(), "{a} · {keep} vs {b}");
            assert!((b - c).abs() <= b.abs() / 128.0, "the bf16 copy follows the master: {b} vs {c}");
        }
    }

    #[test]
    fn state_round_trips() {
        let cfg = OptimConfig::default();
        let store = store(&[("w", &[1.0, 1.0, 1.0])]);
        let opts = || vec![ParamOptions::default()];
        let mut a = Optimizer::new(&cfg, &store, opts()).unwrap();
        a.step(&[Some(Tensor::new(&[0.1f32, 0.2, 0.3], &Device::Cpu).unwrap())], 0.1).unwrap();
        let saved: HashMap<_, _> = a.state().unwrap().into_iter().collect();
        assert_eq!(saved.len(), 2);
        let mut b = Optimizer::new(&cfg, &store, opts()).unwrap();
        b.load_state(&saved, a.steps()).unwrap();
        assert_eq!(b.steps(), 1);
        let m = b.state().unwrap()[0].1.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!((m[1] - 0.02).abs() < 1e-6, "{m:?}");
        let adagrad = OptimConfig { optimizer: OptimizerKind::Adagrad, ..OptimConfig::default() };
        let mut c = Optimizer::new(&adagrad, &store, opts()).unwrap();
        assert!(c.load_state(&saved, 1).unwrap_err().to_string().contains("optim.w.sum"));
    }
}
