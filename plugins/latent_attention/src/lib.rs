//! hlb-gpt's latent attention block (tysam-code/hlb-gpt): pre-norm, one residual, one fused
//! projection that feeds both a gated MLP and a single narrow attention head.
//!
//! `u = LN(x)` (LayerNorm without bias); one matmul `C → [q (C/8) | k (C/8) | lin (2C) | gate (2C)]`;
//! `g = lin · GELU(gate)`: its first half (C) is the MLP's output, its second half the attention's
//! value; one query/key head C/8 wide scores `q·k/√(C/8) − softplus(p)·(i − j)` (an ALiBi-like
//! distance penalty, one learned p per layer, starting at 1); then `x += W_proj [g_local | attn]`.
//! The final norm is a LayerNorm without bias too.

use lmhost_kit::prelude::*;

knobs! {
    /// The latent attention block (no knobs of its own: its shape follows n_embd).
    pub struct LatentConfig {}
}

pub struct LatentBlock {
    ln: LayerNorm,
    /// C → C/8 + C/8 + 2C + 2C.
    w_in: Linear,
    /// 2C → C.
    w_proj: Linear,
    /// softplus(p) is the slope of the distance penalty.
    p: Tensor,
    qk: usize,
    c: usize,
}

impl Block for LatentBlock {
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (qk, c) = (self.qk, self.c);
        let z = self.w_in.forward(&self.ln.forward(x)?)?; // (B, T, 2·C/8 + 4C)
        let q = z.narrow(2, 0, qk)?.unsqueeze(1)?.contiguous()?; // (B, 1, T, C/8): one head
        let k = z.narrow(2, qk, qk)?.unsqueeze(1)?.contiguous()?;
        let (lin, gate) = (z.narrow(2, 2 * qk, 2 * c)?, z.narrow(2, 2 * qk + 2 * c, 2 * c)?);
        let g = (lin * nn::gelu(&gate.contiguous()?)?)?; // (B, T, 2C)
        let local = g.narrow(2, 0, c)?;
        let value = g.narrow(2, c, c)?.unsqueeze(1)?.contiguous()?; // (B, 1, T, C)
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let (k, value) = match cache {
            Some(cache) => cache.append(&k, &value)?,
            None => (k, value),
        };
        let (tq, tk) = (q.dim(2)?, k.dim(2)?);
        // distance[i, j] = (offset + i) − j for the keys a query sees (the rest is masked).
        let distance: Vec<f32> =
            (0..tq).flat_map(|i| (0..tk).map(move |j| (offset + i).saturating_sub(j) as f32)).collect();
        let distance = Tensor::from_vec(distance, (tq, tk), x.device())?;
        let slope = (self.p.exp()? + 1.0)?.log()?; // softplus(p)
        let scores =
            (q.matmul(&k.t()?)? / (qk as f64).sqrt())?.broadcast_sub(&distance.broadcast_mul(&slope)?)?;
        let attn = kernels::causal_softmax(&scores, 1.0)?.matmul(&value)?.squeeze(1)?; // (B, T, C)
        x + self.w_proj.forward(&Tensor::cat(&[&local, &attn], 2)?)?
    }

    fn metrics(&self) -> Result<Vec<(String, f64)>> {
        let slope = (self.p.exp()? + 1.0)?.log()?;
        Ok(vec![("distance_slope".into(), f64::from(slope.to_vec1::<f32>()?[0]))])
    }
}

impl Recipe for LatentConfig {
    fn block(&self, _layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Block>> {
        let c = spec.gpt.n_embd;
        if !c.is_multiple_of(8) {
            lmhost_kit::candle::bail!(
                "latent attention needs n_embd divisible by 8 (its query/key head is C/8 wide), got {c}"
            );
        }
        let qk = c / 8;
        Ok(Box::new(LatentBlock {
            ln: LayerNorm::new(c, false, vb.pp("ln"))?,
            w_in: nn::linear(c, 2 * qk + 4 * c, spec.gpt.init_std, false, vb.pp("w_in"))?,
            w_proj: nn::linear(2 * c, c, spec.residual_std(), false, vb.pp("w_proj"))?,
            p: vb.get_with_hints(1, "distance_p", Init::Const(1.0))?,
            qk,
            c,
        }))
    }

    fn final_norm(&self, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Norm>> {
        Ok(Box::new(LayerNorm::new(spec.gpt.n_embd, false, vb)?))
    }
}

pub struct LatentAttention(Gpt);

impl Experiment for LatentAttention {
    type Config = LatentConfig;
    const NAME: &'static str = "latent_attention";
    const SUMMARY: &'static str = "hlb-gpt's block: one fused projection, a gated MLP and one narrow attention head with a distance penalty.";
    const DESCRIPTION: &'static str =
        "hlb-gpt's latent attention block. Pre-norm (LayerNorm without bias), one \
        residual: one matmul C → [q (C/8) | k (C/8) | lin (2C) | gate (2C)], g = lin · GELU(gate); \
        the first half of g is the MLP output, the second half the value of one C/8-wide attention \
        head whose logits get −softplus(p)·(i − j) (one learned p per layer, starting at 1); then \
        x += W_proj [g_local | attn].";

    fn build(spec: &ModelSpec, config: &LatentConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Gpt::new(config, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0)
    }

    fn param_options(&self, name: &str) -> ParamOptions {
        // The distance slope is a learned gain: no weight decay.
        ParamOptions {
            weight_decay: name.ends_with("distance_p").then_some(false),
            ..ParamOptions::default()
        }
    }
}

export_plugin!(LatentAttention);

#[cfg(test)]
mod tests {
    use super::*;
    use lmhost_kit::testing;

    #[test]
    fn it_trains_and_generates_the_same_with_a_cache() {
        testing::every_parameter_gets_a_gradient::<LatentAttention>("");
        testing::training_lowers_the_loss::<LatentAttention>("");
        testing::cache_matches_recompute::<LatentAttention>("");
    }

    #[test]
    fn one_fused_projection_per_block() {
        let t = testing::trainer::<LatentAttention>("", 0);
        let w_in =
            t.params.tensors().into_iter().find(|(n, _)| n == "transformer.h.0.w_in.weight").unwrap().1;
        assert_eq!(w_in.dims(), [2 * 4 + 4 * 32, 32]); // q, k (C/8 = 4 each), lin and gate (2C each)
        let names: Vec<String> = t
            .params
            .params()
            .into_iter()
            .map(|p| p.name)
            .filter(|n| n.starts_with("transformer.h.0."))
            .collect();
        assert_eq!(names.len(), 4, "{names:?}"); // ln, w_in, w_proj, p
        assert!(testing::trainer::<LatentAttention>("", 0).model.extra_metrics().unwrap()[0].1 > 1.3);
    }
}
