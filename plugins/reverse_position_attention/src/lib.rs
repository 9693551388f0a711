//! Reverse-position attention (lmplay `apos1_*`): each block learns `P ∈ R^{H × D × T_max}`
//! (initialised N(0, 1)) and scores query i against key j ≤ i with a content-dependent term for
//! the distance back from the query,
//!
//! `s_ij = (q_i·k_j + q_i·P_h[:, i−j]) / √D` ("add"),  or  `(q_i·k_j)·(q_i·P_h[:, i−j]) / √D`
//! ("mul"), then the causal mask and the softmax.
//!
//! `Q·P` is computed once as (B, H, T, T_max) and its (i − j) diagonal gathered. Positions are
//! absolute, so with a KV cache the new queries at `offset + i` still see the right distances
//! (lmplay's generation had no position term for the new token; this one has, and a test
//! checks cached generation against recomputing). Kept in the prod model (not sacrificial).

use lmhost_kit::prelude::*;

knob_enum! {
    /// How the position term meets the content score.
    pub enum Combine {
        Add = "add",
        Mul = "mul",
    }
}

knob_enum! {
    /// Which blocks get the position term.
    pub enum Blocks {
        All = "all",
        LastTwo = "last2",
    }
}

knobs! {
    /// Reverse-position attention.
    pub struct AposConfig {
        /// add (s = q·k + q·P) or mul (s = (q·k)(q·P)).
        pub apos_combine: Combine = Combine::Add,
        /// all blocks, or only the last two (last2).
        pub apos_blocks: Blocks = Blocks::All,
    }
}

pub struct ReversePositionAttention {
    attn: CausalSelfAttention,
    /// P: (H, D, T_max).
    p: Tensor,
    combine: Combine,
}

impl Attention for ReversePositionAttention {
    fn forward(&self, x: &Tensor, cache: Option<&mut LayerCache>) -> Result<Tensor> {
        let (q, k, v) = self.attn.qkv(x)?; // (B, H, Tq, D)
        let offset = cache.as_ref().map_or(0, |c| c.len()); // absolute position of the first query
        let (q, k) = self.attn.rotate(&q, &k, offset)?; // the llama arch's RoPE stays
        let (k, v) = match cache {
            Some(cache) => cache.append(&k, &v)?,
            None => (k, v),
        };
        let (b, h, tq, _) = q.dims4()?;
        let tk = k.dim(2)?;
        let content = q.matmul(&k.t()?)?; // (B, H, Tq, Tk)
        let qp = q.broadcast_matmul(&self.p.to_dtype(q.dtype())?.unsqueeze(0)?)?; // (B, H, Tq, T_max)
                                                                                  // distance[i, j] = (offset + i) − j for the keys a query sees; masked keys point at 0.
        let distance: Vec<u32> =
            (0..tq).flat_map(|i| (0..tk).map(move |j| (offset + i).saturating_sub(j) as u32)).collect();
        let distance =
            Tensor::from_vec(distance, (tq, tk), x.device())?.broadcast_as((b, h, tq, tk))?.contiguous()?;
        let position = qp.gather(&distance, 3)?; // (B, H, Tq, Tk): q_i · P_h[:, i − j]
        let scores = match self.combine {
            Combine::Add => (content + position)?,
            Combine::Mul => (content * position)?,
        };
        let y = kernels::causal_softmax(&scores, self.attn.scale)?.matmul(&v)?;
        self.attn.project(&y)
    }
}

impl Recipe for AposConfig {
    fn attention(&self, layer: usize, spec: &ModelSpec, vb: VarBuilder) -> Result<Box<dyn Attention>> {
        let attn = CausalSelfAttention::new(self, spec, vb.clone())?;
        let with_position = match self.apos_blocks {
            Blocks::All => true,
            Blocks::LastTwo => layer + 2 >= spec.gpt.n_layer,
        };
        if !with_position {
            return Ok(Box::new(attn));
        }
        let shape = (spec.gpt.n_head, spec.head_size(), spec.context_length);
        let p = vb.get_with_hints(shape, "position", Init::Randn { mean: 0.0, stdev: 1.0 })?;
        Ok(Box::new(ReversePositionAttention { attn, p, combine: self.apos_combine }))
    }
}

pub struct ReversePosition(Gpt);

impl Experiment for ReversePosition {
    type Config = AposConfig;
    const NAME: &'static str = "reverse_position_attention";
    const SUMMARY: &'static str = "A learned score for the distance back from each query (lmplay apos1).";
    const DESCRIPTION: &'static str = "lmplay's reverse-position attention: per block P ∈ R^{H×D×T_max}, \
        s_ij = (q_i·k_j + q_i·P_h[:, i−j]) / √D (add) or (q_i·k_j)·(q_i·P_h[:, i−j]) / √D (mul), \
        then the causal softmax. Q·P is computed once and its (i−j) diagonal gathered; generation \
        with a KV cache keeps the position term. Kept in the prod model.";

    fn variants() -> Vec<Variant> {
        vec![
            Variant::new("apos1_0", "add, every block")
                .set("apos_combine", Combine::Add)
                .set("apos_blocks", Blocks::All),
            Variant::new("apos1_1", "mul, every block")
                .set("apos_combine", Combine::Mul)
                .set("apos_blocks", Blocks::All),
            Variant::new("apos1_2", "add, the last two blocks")
                .set("apos_combine", Combine::Add)
                .set("apos_blocks", Blocks::LastTwo),
        ]
    }

    fn build(spec: &ModelSpec, config: &AposConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self(Gpt::new(config, spec, vb)?))
    }

    fn gpt(&self) -> Option<&Gpt> {
        Some(&self.0)
    }
}

export_plugin!(ReversePosition);

#[cfg(test)]
mod tests {
    use super::*;
    use lmhost_kit::testing;

    const VARIANTS: [&str; 3] = [
        r#"{"apos_combine": "add", "apos_blocks": "all"}"#,
        r#"{"apos_combine": "mul", "apos_blocks": "all"}"#,
        r#"{"apos_combine": "add", "apos_blocks": "last2", "n_layer": 3}"#,
    ];

    #[test]
    fn every_variant_trains_and_generates_the_same_with_a_cache() {
        for config in VARIANTS {
            testing::every_parameter_gets_a_gradient::<ReversePosition>(config);
            testing::training_lowers_the_loss::<ReversePosition>(config);
            testing::cache_matches_recompute::<ReversePosition>(config);
        }
    }

    #[test]
    fn the_position_term_uses_the_distance_back_from_the_query() {
        // One head, D = 2: compare the gathered term with q_i · P[:, i − j] written out.
        let dev = Device::Cpu;
        let q = Tensor::new(&[[[[1f32, 2.], [3., -1.], [0.5, 0.5]]]], &dev).unwrap(); // (1, 1, 3, 2)
        let p = Tensor::new(&[[[1f32, 10., 100.], [2., 20., 200.]]], &dev).unwrap(); // (1, 2, 3)
        let qp = q.broadcast_matmul(&p.unsqueeze(0).unwrap()).unwrap();
        let distance: Vec<u32> =
            (0..3).flat_map(|i| (0..3).map(move |j| if j <= i { (i - j) as u32 } else { 0 })).collect();
        let idx = Tensor::from_vec(distance, (1, 1, 3, 3), &dev).unwrap();
        let got = qp.gather(&idx, 3).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let qv = [[1f32, 2.], [3., -1.], [0.5, 0.5]];
        let pv = [[1f32, 10., 100.], [2., 20., 200.]];
        for i in 0..3 {
            for j in 0..=i {
                let d = i - j;
                let expect = qv[i][0] * pv[0][d] + qv[i][1] * pv[1][d];
                assert_eq!(got[i * 3 + j], expect, "s[{i},{j}]");
            }
        }
    }
}
