//! Loading plugins: the built-in baseline (the kit's, linked into the host) or a `.so` file,
//! loaded with abi_stable's version and layout checks, and every refusal turned into one line
//! that names the file and the fix.

use std::path::{Path, PathBuf};

use abi_stable::library::{lib_header_from_path, LibraryError};
use abi_stable::std_types::RStr;
use lmhost_kit::config::FieldSpec;
use lmhost_kit::export::{root_module, BuiltinBaseline};
use plugin_api::{ModelBox, PluginError, PluginInfo, PluginModRef, RunSpec};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Where a plugin comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PluginSource {
    /// The kit's baseline, linked into the host.
    Builtin,
    /// A plugin library on disk.
    Library { path: PathBuf },
}

impl PluginSource {
    pub fn label(&self) -> String {
        match self {
            PluginSource::Builtin => "built-in baseline".into(),
            PluginSource::Library { path } => path.display().to_string(),
        }
    }
}

/// What a plugin says about itself, as plain host data.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PluginDescription {
    pub name: String,
    pub version: String,
    pub api_version: String,
    pub summary: String,
    pub description: String,
    pub variants: Vec<VariantDescription>,
    pub fields: Vec<FieldSpec>,
    pub sacrificial: bool,
    /// The cargo features the plugin was built with (`cuda`); `None` from plugins built before
    /// plugin-api 0.1.2, which do not say.
    #[serde(default)]
    pub features: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VariantDescription {
    pub name: String,
    pub summary: String,
    pub overrides: Map<String, Value>,
}

impl PluginDescription {
    pub fn builtin() -> Self {
        Self::of(root_module::<BuiltinBaseline>())
    }

    fn of(module: PluginModRef) -> Self {
        let features = module.features().map(|f| f().into_iter().map(|s| s.to_string()).collect());
        Self { features, ..Self::from_info(&(module.info())()) }
    }

    fn from_info(info: &PluginInfo) -> Self {
        Self {
            name: info.name.to_string(),
            version: info.version.to_string(),
            api_version: info.api_version.to_string(),
            summary: info.summary.to_string(),
            description: info.description.to_string(),
            variants: info
                .variants
                .iter()
                .map(|v| VariantDescription {
                    name: v.name.to_string(),
                    summary: v.summary.to_string(),
                    overrides: serde_json::from_str(v.overrides_json.as_str()).unwrap_or_default(),
                })
                .collect(),
            fields: info
                .config_fields
                .iter()
                .map(|f| FieldSpec {
                    // The ABI does not carry it; the kit's own knobs are the ones that observe.
                    observes: lmhost_kit::trainer::kit_fields()
                        .iter()
                        .any(|k| k.name == f.name.as_str() && k.observes),
                    name: f.name.to_string(),
                    kind: f.kind.to_string(),
                    default: serde_json::from_str(f.default_json.as_str()).unwrap_or(Value::Null),
                    choices: f.choices.iter().map(|c| c.to_string()).collect(),
                    help: f.help.to_string(),
                })
                .collect(),
            sacrificial: info.sacrificial,
            features: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PluginLoadError {
    #[error("{path}: no such plugin file; build the plugins with `cargo build --release --workspace` (or pass the crate folder, e.g. plugins/NAME, to build it)")]
    Missing { path: String },
    #[error("{path} is not a loadable plugin library ({reason}); rebuild it with `cargo build --release --workspace`")]
    NotALibrary { path: String, reason: String },
    #[error("{path} is a shared library but not an lmhost plugin (it exports no plugin root module); a plugin crate ends with `lmhost_kit::export_plugin!(YourExperiment);`")]
    NotAPlugin { path: String },
    #[error("{path} was built against plugin-api {found}, but this lmhost speaks plugin-api {expected}; rebuild the plugin in this workspace with `cargo build --release --workspace`")]
    WrongApiVersion { path: String, found: String, expected: String },
    #[error("{path} was built against an incompatible plugin-api layout ({summary}); full report in {report}; rebuild the plugin in this workspace with `cargo build --release --workspace`")]
    WrongLayout { path: String, summary: String, report: String },
    #[error("{path} could not be loaded: {reason}")]
    Other { path: String, reason: String },
}

/// A plugin ready to build models in this process.
pub struct Plugin {
    module: PluginModRef,
    pub description: PluginDescription,
    pub source: PluginSource,
}

impl Plugin {
    pub fn builtin() -> Self {
        let module = root_module::<BuiltinBaseline>();
        Self { description: PluginDescription::of(module), module, source: PluginSource::Builtin }
    }

    pub fn open(source: &PluginSource) -> Result<Self, PluginLoadError> {
        match source {
            PluginSource::Builtin => Ok(Self::builtin()),
            PluginSource::Library { path } => Self::load(path),
        }
    }

    /// Loads a plugin library. Each file is loaded on its own (not through abi_stable's
    /// per-type module cache, which would hand back the first plugin for every later file).
    pub fn load(path: &Path) -> Result<Self, PluginLoadError> {
        let shown = path.display().to_string();
        if !path.is_file() {
            return Err(PluginLoadError::Missing { path: shown });
        }
        let module = lib_header_from_path(path)
            .and_then(|header| header.init_root_module::<PluginModRef>())
            .map_err(|e| load_error(&shown, e))?;
        let description = PluginDescription::of(module);
        Ok(Self { module, description, source: PluginSource::Library { path: path.to_owned() } })
    }

    /// The plugin's model config with defaults filled in, or its one-line refusal.
    pub fn resolve_model_config(
        &self,
        model: &Map<String, Value>,
    ) -> Result<Map<String, Value>, PluginError> {
        let json = Value::Object(model.clone()).to_string();
        let resolved = (self.module.resolve_config())(RStr::from_str(&json)).into_result()?;
        serde_json::from_str(resolved.as_str()).map_err(|e| {
            PluginError::new(
                plugin_api::ErrorKind::Config,
                format!("resolved config is not a JSON object: {e}"),
            )
        })
    }

    pub fn create(&self, spec: &RunSpec, model: &Map<String, Value>) -> Result<ModelBox, PluginError> {
        let json = Value::Object(model.clone()).to_string();
        (self.module.create())(spec, RStr::from_str(&json)).into_result()
    }
}

fn load_error(path: &str, e: LibraryError) -> PluginLoadError {
    let path = path.to_owned();
    match e {
        LibraryError::OpenError { err, .. } => {
            PluginLoadError::NotALibrary { path, reason: first_line(&err.to_string()) }
        }
        LibraryError::GetSymbolError { .. } => PluginLoadError::NotAPlugin { path },
        LibraryError::IncompatibleVersionNumber { expected_version, actual_version, .. } => {
            PluginLoadError::WrongApiVersion {
                path,
                found: actual_version.to_string(),
                expected: expected_version.to_string(),
            }
        }
        LibraryError::AbiInstability(report) => {
            // abi_stable's report is hundreds of lines; show its `Error:` lines, keep the rest.
            let text = report.to_string();
            let errors: Vec<&str> = text.lines().map(str::trim).filter(|l| l.starts_with("Error:")).collect();
            let summary = if errors.is_empty() {
                first_line(&text)
            } else {
                let mut s = errors.iter().take(3).copied().collect::<Vec<_>>().join("; ");
                if errors.len() > 3 {
                    s.push_str(&format!("; and {} more", errors.len() - 3));
                }
                s
            };
            let report_path =
                std::env::temp_dir().join(format!("lmhost-abi-report-{}.txt", std::process::id()));
            let report = match std::fs::write(&report_path, &text) {
                Ok(()) => report_path.display().to_string(),
                Err(_) => "(could not be written)".into(),
            };
            PluginLoadError::WrongLayout { path, summary, report }
        }
        other => PluginLoadError::Other { path, reason: first_line(&other.to_string().replace('\n', " ")) },
    }
}

fn first_line(s: &str) -> String {
    s.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("").to_owned()
}
