//! The ABI side of a plugin: [`export_plugin!`](crate::export_plugin) turns an [`Experiment`]
//! into the root module the host loads. Every entry point runs under `catch_unwind`, so a panic
//! in a plugin comes back to the host as an error instead of ending the process.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};

pub use abi_stable::library::LibHeader;
use abi_stable::{
    library::{CheckTypeLayout, RootModuleResult},
    prefix_type::PrefixTypeTrait,
    sabi_trait::TD_Opaque,
    std_types::{RErr, ROk, RResult, RSlice, RStr, RString, RVec},
};
use plugin_api::{
    BatchStats, ConfigField, Counters, ErrorKind, GenerateSettings, Metric, ModelBox, ParamCounts,
    PluginError, PluginInfo, PluginMod, PluginModRef, StepReport, StepSettings, StepStats, TokenBatch,
    TrainableModel, TrainableModel_TO, VariantInfo,
};

use crate::experiment::Experiment;
use crate::generate::Sampling;
use crate::trainer::{config_fields, KitError, ResolvedConfig, RunSpec, Trainer};

/// The symbol abi_stable looks for in a plugin (`abi_stable::library::ROOT_MODULE_LOADER_NAME`;
/// a test keeps the two equal). Spelled out so that plugins need no direct abi_stable dependency.
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// Exports an [`Experiment`] as an lmhost plugin: `lmhost_kit::export_plugin!(MyExperiment);`
#[macro_export]
macro_rules! export_plugin {
    ($experiment:ty) => {
        #[doc(hidden)]
        pub struct LmhostPluginCrate;

        impl $crate::export::PluginCrate for LmhostPluginCrate {
            type Experiment = $experiment;
            const VERSION: &'static str = env!("CARGO_PKG_VERSION");
        }

        #[doc(hidden)]
        #[export_name = "_1as_0lib_1header_0root_bmodule_bloader"]
        pub static LMHOST_PLUGIN_HEADER: $crate::export::LibHeader =
            $crate::export::lib_header::<LmhostPluginCrate>();
    };
}

/// A crate that exports an experiment: the experiment and the crate's version.
pub trait PluginCrate: 'static {
    type Experiment: Experiment;
    const VERSION: &'static str;
}

/// The baseline as the host links it in: the kit's own version.
pub struct BuiltinBaseline;

impl PluginCrate for BuiltinBaseline {
    type Experiment = crate::experiment::Baseline;
    const VERSION: &'static str = env!("CARGO_PKG_VERSION");
}

/// The header abi_stable reads when it loads the plugin.
pub const fn lib_header<P: PluginCrate>() -> LibHeader {
    // Safety: the constructor returns a `PluginModRef`, the module type named here.
    unsafe { LibHeader::from_constructor::<PluginModRef>(load_root::<P>, CheckTypeLayout::Yes) }
}

extern "C" fn load_root<P: PluginCrate>() -> RootModuleResult {
    abi_stable::library::__call_root_module_loader(root_module::<P>)
}

/// The root module of a plugin crate. The host calls this directly for its built-in baseline,
/// so baseline and plugins go through the same interface.
pub fn root_module<P: PluginCrate>() -> PluginModRef {
    PluginMod {
        info: info::<P>,
        resolve_config: resolve_config::<P::Experiment>,
        create: create::<P::Experiment>,
        features,
    }
    .leak_into_prefix()
}

/// The cargo features this kit was built with, as the plugin reports them.
pub fn built_features() -> Vec<&'static str> {
    [("cuda", cfg!(feature = "cuda"))].into_iter().filter(|(_, on)| *on).map(|(name, _)| name).collect()
}

extern "C" fn features() -> RVec<RString> {
    built_features().into_iter().map(RString::from).collect()
}

extern "C" fn info<P: PluginCrate>() -> PluginInfo {
    type E<P> = <P as PluginCrate>::Experiment;
    let fields = config_fields::<E<P>>()
        .into_iter()
        .map(|f| ConfigField {
            name: f.name.into(),
            kind: f.kind.into(),
            default_json: f.default.to_string().into(),
            choices: f.choices.into_iter().map(RString::from).collect(),
            help: f.help.into(),
        })
        .collect();
    let variants = E::<P>::variants()
        .into_iter()
        .map(|v| VariantInfo {
            name: v.name.into(),
            summary: v.summary.into(),
            overrides_json: serde_json::Value::Object(v.overrides).to_string().into(),
        })
        .collect();
    PluginInfo {
        name: E::<P>::NAME.into(),
        version: P::VERSION.into(),
        api_version: plugin_api::API_VERSION.into(),
        summary: E::<P>::SUMMARY.into(),
        description: E::<P>::DESCRIPTION.into(),
        variants,
        config_fields: fields,
        sacrificial: E::<P>::SACRIFICIAL,
    }
}

extern "C" fn resolve_config<E: Experiment>(config_json: RStr<'_>) -> RResult<RString, PluginError> {
    guard(|| {
        let config = ResolvedConfig::<E>::parse(config_json.as_str())?;
        Ok(serde_json::Value::Object(config.to_map()).to_string().into())
    })
}

extern "C" fn create<E: Experiment>(
    spec: &plugin_api::RunSpec,
    config_json: RStr<'_>,
) -> RResult<ModelBox, PluginError> {
    guard(|| {
        let trainer = Trainer::<E>::new(&RunSpec::from_abi(spec)?, config_json.as_str())?;
        Ok(TrainableModel_TO::from_value(PluginModel(trainer), TD_Opaque))
    })
}

/// A trainer seen through the ABI.
struct PluginModel<E: Experiment>(Trainer<E>);

impl<E: Experiment> TrainableModel for PluginModel<E> {
    fn forward_backward(
        &mut self,
        batch: TokenBatch<'_>,
        loss_scale: f64,
    ) -> RResult<BatchStats, PluginError> {
        guard(|| {
            let (rows, cols) = (batch.rows as usize, batch.cols as usize);
            self.0.forward_backward(batch.ids.as_slice(), rows, cols, loss_scale)
        })
    }

    fn optimizer_step(&mut self, settings: StepSettings) -> RResult<StepReport, PluginError> {
        guard(|| {
            let grad_norm = self.0.optimizer_step(settings.lr)?;
            Ok(StepReport { grad_norm })
        })
    }

    fn evaluate(&mut self, batch: TokenBatch<'_>) -> RResult<BatchStats, PluginError> {
        guard(|| self.0.evaluate(batch.ids.as_slice(), batch.rows as usize, batch.cols as usize))
    }

    fn save_state(&self, metadata_json: RStr<'_>) -> RResult<RVec<u8>, PluginError> {
        guard(|| {
            let metadata: HashMap<String, String> = if metadata_json.is_empty() {
                HashMap::new()
            } else {
                serde_json::from_str(metadata_json.as_str()).map_err(|e| {
                    KitError::Config(format!("state metadata must map strings to strings: {e}"))
                })?
            };
            Ok(self.0.save_state(metadata)?.into())
        })
    }

    fn load_state(&mut self, state: RSlice<'_, u8>) -> RResult<(), PluginError> {
        guard(|| self.0.load_state(state.as_slice()))
    }

    fn export_prod(&self) -> RResult<RVec<u8>, PluginError> {
        guard(|| Ok(self.0.export_prod()?.into()))
    }

    fn parameters(&self) -> RResult<RString, PluginError> {
        guard(|| Ok(serde_json::Value::from(self.0.parameters()).to_string().into()))
    }

    fn flops_per_token(&mut self) -> RResult<f64, PluginError> {
        guard(|| self.0.flops_per_token())
    }

    fn param_counts(&self) -> ParamCounts {
        // Counting cannot fail for a model that was built; a failure reports zero counts.
        guard(|| self.0.param_counts()).unwrap_or_default()
    }

    fn logits(&mut self, batch: TokenBatch<'_>) -> RResult<RVec<f32>, PluginError> {
        guard(|| Ok(self.0.logits(batch.ids.as_slice(), batch.rows as usize, batch.cols as usize)?.into()))
    }

    fn generate(
        &mut self,
        prompt: RSlice<'_, u32>,
        settings: GenerateSettings,
    ) -> RResult<RVec<u32>, PluginError> {
        guard(|| {
            let sampling = Sampling {
                max_tokens: settings.max_tokens as usize,
                temperature: settings.temperature,
                top_k: settings.top_k as usize,
                top_p: settings.top_p,
                seed: settings.seed,
                stop: settings.stop_token.into_option(),
            };
            Ok(self.0.generate(prompt.as_slice(), &sampling)?.into())
        })
    }

    fn load_weights(&mut self, weights: RSlice<'_, u8>) -> RResult<(), PluginError> {
        guard(|| self.0.load_weights(weights.as_slice()))
    }

    fn accumulate(&mut self, batch: TokenBatch<'_>, loss_scale: f64) -> RResult<(), PluginError> {
        guard(|| {
            let (rows, cols) = (batch.rows as usize, batch.cols as usize);
            self.0.accumulate(batch.ids.as_slice(), rows, cols, loss_scale)
        })
    }

    fn apply_step(&mut self, settings: StepSettings) -> RResult<(), PluginError> {
        guard(|| self.0.apply_step(settings.lr))
    }

    fn take_step_stats(&mut self) -> RResult<RVec<StepStats>, PluginError> {
        guard(|| Ok(self.0.take_step_stats()?.into()))
    }

    fn counters(&self) -> Counters {
        Counters {
            ops: candle_core::lmhost::counters::ops(),
            host_reads: candle_core::lmhost::counters::host_reads(),
        }
    }

    fn extra_metrics(&mut self) -> RResult<RVec<Metric>, PluginError> {
        guard(|| {
            Ok(self
                .0
                .extra_metrics()?
                .into_iter()
                .map(|(name, value)| Metric { name: name.into(), value })
                .collect())
        })
    }
}

/// Runs `f`, turning its error or its panic into a [`PluginError`].
fn guard<T>(f: impl FnOnce() -> Result<T, KitError>) -> RResult<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => ROk(value),
        Ok(Err(e)) => RErr(to_plugin_error(e)),
        Err(payload) => {
            let message = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic with a non-string payload".to_owned());
            RErr(PluginError::new(ErrorKind::Panic, message))
        }
    }
}

fn to_plugin_error(e: KitError) -> PluginError {
    let kind = match &e {
        KitError::Config(_) => ErrorKind::Config,
        KitError::State(_) => ErrorKind::State,
        KitError::Candle(_) => ErrorKind::Runtime,
    };
    PluginError::new(kind, crate::trainer::first_line(&e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_module_symbol_is_abi_stables() {
        assert_eq!(ROOT_MODULE_SYMBOL, abi_stable::library::ROOT_MODULE_LOADER_NAME);
    }
}
