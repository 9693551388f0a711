//! The kit's gradient check catches what bites a plugin author writing RoPE with candle-nn's own
//! `rotary_emb::rope`: it has no backward pass, so q's and k's thirds of `c_attn` never train, yet
//! the weight still gets a gradient through v, and a check that only asks for a non-zero
//! gradient passes.

use lmhost_kit::prelude::*;
use lmhost_kit::testing;

knobs! {
    /// No knobs.
    pub struct CandleRopeConfig {}
}

/// The baseline's attention with q and k rotated by candle-nn's `rope`.
struct CandleRope {
    attn: CausalSelfAttention,
}

impl Attention for CandleRope {
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (q, k, v) = self.attn.qkv(x)?; // (B, H, T, D)
        let (t, d) = (q.dim(2)?, q.dim(3)?);
        let offset = cache.as_ref().map_or(0, |c| c.len());
        let angles: Vec<f32> = (offset..offset + t)
            .flat_map(|p| (0..d / 2).map(move |i| p as f32 / 10_000f32.powf(2.0 * i as f32 / d as f32)))
            .collect();
        let angles = Tensor::from_vec(angles, (t, d / 2), x.device())?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let q = candle_nn::rotary_emb::rope(&q.contiguous()?, &cos, &sin)?;
        let k = candle_nn::rotary_emb::rope(&k.contiguous()?, &cos, &sin)?;
        self.attn.attend(&q, &k, &v, cache)
    }
}

impl Recipe for CandleRopeConfig {
    fn attention(&self, _layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Attention>> {
        Ok(Box::new(CandleRope { attn: CausalSelfAttention::new(self, spec, vb)? }))
    }
}

struct CandleRopeModel(Gpt);

impl Experiment for CandleRopeModel {
    type Config = CandleRopeConfig;
    const NAME: &'static str = "candle_rope";
    const SUMMARY: &'static str = "RoPE through candle-nn's rotary_emb::rope.";
    const DESCRIPTION: &'static str = "A test plugin.";

    fn build(spec: &ModelSpec, config: &CandleRopeConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Gpt::new(config, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0)
    }
}

#[test]
fn a_rope_without_backward_fails_the_gradient_check_on_the_q_and_k_slices_of_c_attn() {
    let failure = std::panic::catch_unwind(|| {
        testing::every_parameter_gets_a_gradient::<CandleRopeModel>(r#"{"arch": "gpt2"}"#);
    })
    .expect_err("candle-nn's rope cuts q and k out of the backward pass");
    let message = failure.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("of `transformer.h.0.attn.c_attn.weight` get a zero gradient"), "{message}");
}

#[test]
fn the_kit_rope_passes_it_in_both_archs() {
    testing::every_parameter_gets_a_gradient::<lmhost_kit::Baseline>("");
}

knobs! {
    /// No knobs.
    pub struct DoubledConfig {}
}

/// x ↦ x, whose backward doubles the gradient: a custom op with a wrong backward.
struct DoubledBackward;

impl lmhost_kit::candle::CustomOp1 for DoubledBackward {
    fn name(&self) -> &'static str {
        "doubled-backward"
    }

    fn cpu_fwd(
        &self,
        s: &lmhost_kit::candle::CpuStorage,
        l: &lmhost_kit::candle::Layout,
    ) -> Result<(lmhost_kit::candle::CpuStorage, lmhost_kit::candle::Shape)> {
        let (start, end) = l.contiguous_offsets().expect("contiguous");
        Ok((
            lmhost_kit::candle::CpuStorage::F32(s.as_slice::<f32>()?[start..end].to_vec()),
            l.shape().clone(),
        ))
    }

    fn bwd(&self, _arg: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some((grad * 2.0)?))
    }
}

/// The baseline's MLP projection, its input passed through [`DoubledBackward`].
struct Doubled(Box<dyn Dense>);

impl Dense for Doubled {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(&x.contiguous()?.apply_op1(DoubledBackward)?)
    }
}

impl Recipe for DoubledConfig {
    fn dense(&self, spec: DenseSpec, vb: VarBuilder) -> Result<Box<dyn Dense>> {
        let doubled = vb.prefix().ends_with("h.1.mlp.c_proj");
        let dense: Box<dyn Dense> = Box::new(nn::dense(spec, vb)?);
        Ok(if doubled { Box::new(Doubled(dense)) } else { dense })
    }
}

struct DoubledModel(Gpt);

impl Experiment for DoubledModel {
    type Config = DoubledConfig;
    const NAME: &'static str = "doubled";
    const SUMMARY: &'static str = "One op whose backward doubles the gradient.";
    const DESCRIPTION: &'static str = "A test plugin.";

    fn build(spec: &ModelSpec, config: &DoubledConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Gpt::new(config, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0)
    }
}

#[test]
fn a_wrong_backward_fails_the_finite_differences() {
    let failure = std::panic::catch_unwind(|| {
        testing::gradients_match_finite_differences::<DoubledModel>(r#"{"arch": "llama"}"#);
    })
    .expect_err("a doubled gradient upstream of the last MLP");
    let message = failure.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("has a wrong backward pass"), "{message}");
}
