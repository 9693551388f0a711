//! The arithmetic a model trains in. Master weights and optimiser state are f32 whatever is
//! chosen; what changes is the dtype of the forward and backward pass (Micikevicius et al. 2018,
//! "Mixed Precision Training", §3). Pure bf16 training is not offered: in bf16 `1 − lr·wd`
//! rounds to 1 (weight decay vanishes) and updates below 2⁻⁸ of a weight are lost.

use candle_core::DType;

crate::knob_enum! {
    /// How the forward and backward are computed; master weights and optimiser state stay f32.
    pub enum Precision {
        /// f32 on the CPU, bf16-mixed on CUDA.
        Auto = "auto",
        /// f32 throughout.
        F32 = "f32",
        /// f32, with TF32 matrix products on CUDA (the same as f32 on the CPU).
        Tf32 = "tf32",
        /// bf16 forward and backward from f32 masters cast once per step; loss, softmax and
        /// norm statistics in f32.
        Bf16Mixed = "bf16-mixed",
    }
}

impl Precision {
    /// What `auto` means on `device` (`cpu` or `cuda:N`); the others stay as they are.
    pub fn resolve(self, device: &str) -> Self {
        match self {
            Precision::Auto if device == "cpu" => Precision::F32,
            Precision::Auto => Precision::Bf16Mixed,
            other => other,
        }
    }

    /// The dtype the model computes in.
    pub fn compute_dtype(self) -> DType {
        match self {
            Precision::Bf16Mixed => DType::BF16,
            _ => DType::F32,
        }
    }

    /// Reads what a run spec says (a resolved precision; `bf16`, pure bf16, is refused).
    pub fn parse(name: &str) -> Result<Self, String> {
        if name == "bf16" {
            return Err(
                "pure bf16 training is not offered (weight decay and small updates vanish in bf16): \
                        use precision=bf16-mixed"
                    .into(),
            );
        }
        let precision = <Self as crate::config::KnobType>::from_json(&serde_json::Value::from(name))
            .map_err(|e| format!("precision: {e}"))?;
        if precision == Precision::Auto {
            return Err("precision `auto` must be resolved for a device before a model is built".into());
        }
        Ok(precision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_follows_the_device_and_pure_bf16_is_refused() {
        assert_eq!(Precision::Auto.resolve("cpu"), Precision::F32);
        assert_eq!(Precision::Auto.resolve("cuda:0"), Precision::Bf16Mixed);
        assert_eq!(Precision::Tf32.resolve("cpu"), Precision::Tf32);
        assert_eq!(Precision::parse("bf16-mixed").unwrap().compute_dtype(), DType::BF16);
        assert!(Precision::parse("bf16").unwrap_err().contains("bf16-mixed"));
        assert!(Precision::parse("auto").is_err());
    }
}
