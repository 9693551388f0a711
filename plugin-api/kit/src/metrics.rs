//! Numbers logged beside the loss every `metrics_every` steps: the outlier metric of every
//! residual-stream state, for any experiment built on the kit's GPT (the baseline included), and
//! whatever the experiment's blocks report (learned gains, ...).

use candle_core::{DType, Result, Tensor};

crate::knobs! {
    /// What is measured beside the loss.
    pub struct MetricsConfig {
        /// Every N optimiser steps, log the outlier kurtosis of each residual-stream state and the
        /// blocks' own metrics (gains), measured on a forward pass of their own; 0 turns them off.
        #[observes = true]
        pub metrics_every: u64 = 25,
    }
}

/// The outlier metric of He et al. (NeurIPS 2024, "Understanding and Minimising Outlier
/// Features"), on a residual-stream state X (…, C): centre each token across C, divide by the RMS
/// over all entries (+1e-8), take each channel's mean square s_j over the tokens, and return the
/// unbiased variance of the s_j over channels (≈ kurtosis − 1 of the activations).
pub fn outlier_kurtosis(x: &Tensor) -> Result<f64> {
    let c = x.dim(candle_core::D::Minus1)?;
    let values: Vec<f64> = x.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
    let tokens = values.len() / c;
    if tokens == 0 || c < 2 {
        candle_core::bail!("outlier kurtosis needs at least one token of two or more channels");
    }
    let mut centred = values;
    for row in centred.chunks_mut(c) {
        let mean = row.iter().sum::<f64>() / c as f64;
        row.iter_mut().for_each(|v| *v -= mean);
    }
    let rms = (centred.iter().map(|v| v * v).sum::<f64>() / centred.len() as f64).sqrt() + 1e-8;
    let mut s = vec![0.0; c];
    for row in centred.chunks(c) {
        for (sj, v) in s.iter_mut().zip(row) {
            *sj += (v / rms).powi(2) / tokens as f64;
        }
    }
    let mean = s.iter().sum::<f64>() / c as f64;
    Ok(s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (c - 1) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn kurtosis_of_a_hand_computed_example() {
        // Tokens [1, 2, 3] and [4, 0, 2]: centred [-1, 0, 1] and [2, -2, 0]; mean square of all
        // entries 10/6; per-channel mean squares divided by it: 1.5, 1.2, 0.3 (mean 1);
        // unbiased variance (0.25 + 0.04 + 0.49) / 2 = 0.39.
        let x = Tensor::new(&[[1f32, 2., 3.], [4., 0., 2.]], &Device::Cpu).unwrap();
        assert!((outlier_kurtosis(&x).unwrap() - 0.39).abs() < 1e-6);
        // One outlier channel raises it; spreading the same energy evenly lowers it.
        let outlier = Tensor::new(&[[10f32, 0., 0., 0.], [-10., 0., 0., 0.]], &Device::Cpu).unwrap();
        let even = Tensor::new(&[[1f32, -1., 1., -1.], [-1., 1., -1., 1.]], &Device::Cpu).unwrap();
        assert!(outlier_kurtosis(&outlier).unwrap() > outlier_kurtosis(&even).unwrap());
    }
}
