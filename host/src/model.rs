//! A plugin's model as the training driver uses it: steps that read nothing back, and what they
//! measured read at once when the driver logs. Plugins built against plugin-api 0.1.2 or later
//! keep the numbers on their device until then; older ones answer each call at once, and the
//! adapter holds their answers until they are asked for, so the driver is written once.

use std::ops::{Deref, DerefMut};

use plugin_api::{BatchStats, Counters, ModelBox, PluginError, StepSettings, StepStats, TokenBatch};

pub struct Model {
    inner: ModelBox,
    /// The plugin keeps a step's numbers on its device (plugin-api ≥ 0.1.2).
    deferred: bool,
    /// An older plugin's answers: the step being accumulated, and the steps applied.
    step: BatchStats,
    applied: Vec<StepStats>,
}

/// Whether a plugin built against `api_version` has the calls of 0.1.2.
fn defers(api_version: &str) -> bool {
    let parts: Vec<u64> = api_version.split('.').filter_map(|p| p.parse().ok()).collect();
    parts.as_slice() >= [0, 1, 2].as_slice()
}

impl Model {
    pub fn new(inner: ModelBox, api_version: &str) -> Self {
        Self { inner, deferred: defers(api_version), step: BatchStats::default(), applied: Vec::new() }
    }

    /// Forward and backward of one micro-batch, its loss kept for [`take_step_stats`](Self::take_step_stats).
    pub fn accumulate(&mut self, batch: TokenBatch<'_>, loss_scale: f64) -> Result<(), PluginError> {
        if self.deferred {
            return self.inner.accumulate(batch, loss_scale).into_result();
        }
        self.step += self.inner.forward_backward(batch, loss_scale).into_result()?;
        Ok(())
    }

    /// Clips and applies the accumulated gradients.
    pub fn apply_step(&mut self, settings: StepSettings) -> Result<(), PluginError> {
        if self.deferred {
            return self.inner.apply_step(settings).into_result();
        }
        let report = self.inner.optimizer_step(settings).into_result()?;
        let batch = std::mem::take(&mut self.step);
        self.applied.push(StepStats { step: settings.step, batch, grad_norm: report.grad_norm });
        Ok(())
    }

    /// What every step applied since the last call measured.
    pub fn take_step_stats(&mut self) -> Result<Vec<StepStats>, PluginError> {
        if self.deferred {
            return Ok(self.inner.take_step_stats().into_result()?.into_vec());
        }
        Ok(std::mem::take(&mut self.applied))
    }

    pub fn counters(&self) -> Counters {
        self.inner.counters()
    }
}

impl Deref for Model {
    type Target = ModelBox;

    fn deref(&self) -> &ModelBox {
        &self.inner
    }
}

impl DerefMut for Model {
    fn deref_mut(&mut self) -> &mut ModelBox {
        &mut self.inner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugins_from_0_1_2_on_keep_their_numbers_on_the_device() {
        assert!(!defers("0.1.1") && !defers("0.1.0") && !defers("0.0.9"));
        assert!(defers("0.1.2") && defers("0.1.10") && defers("0.2.0"));
    }
}

/// One row of a model's parameter table (plugin-api 0.1.3's `parameters`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ParameterRow {
    pub name: String,
    pub shape: Vec<usize>,
    pub decay: bool,
    /// The update rule: adamw, muon, adagrad or sgd.
    pub rule: String,
    pub lr_scale: f64,
}

/// Builds the arm's model (on its device, at its size) and lists its parameters.
pub fn parameters(
    source: &crate::plugin::PluginSource,
    config: &crate::config::ArmConfig,
) -> anyhow::Result<Vec<ParameterRow>> {
    let plugin = crate::plugin::Plugin::open(source)?;
    let run = config.run_config()?;
    let model = plugin
        .create(&run.run_spec(run.vocab_size), &config.model)
        .map_err(|e| anyhow::anyhow!("{} {e}", plugin.description.name))?;
    let json =
        model.parameters().into_result().map_err(|e| anyhow::anyhow!("{} {e}", plugin.description.name))?;
    Ok(serde_json::from_str(json.as_str())?)
}
