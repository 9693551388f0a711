//! What the user asked for, before it meets a plugin: a preset, a variant and `key=value`
//! overrides, from the command line or a sweep's point. [`crate::config::resolve_arm`] turns a
//! request into one arm's config.

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// One `key=value` from the command line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Override {
    pub key: String,
    pub value: String,
}

impl std::str::FromStr for Override {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        let (key, value) =
            s.split_once('=').with_context(|| format!("`{s}` is not key=value (e.g. lr=6e-4)"))?;
        if key.is_empty() {
            bail!("`{s}` has an empty key");
        }
        Ok(Self { key: key.trim().to_owned(), value: value.trim().to_owned() })
    }
}

/// Parses `key=value` words.
pub fn parse_overrides(words: &[String]) -> Result<Vec<Override>> {
    words.iter().map(|w| w.parse()).collect()
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub preset: String,
    pub variant: Option<String>,
    pub overrides: Vec<Override>,
}

impl Request {
    /// From `--preset`, `--device` and the `key=value` words: `variant=` picked out, `--device`
    /// as the `device` key, an `init=hf:DIR` made absolute (workers and resumes may run
    /// elsewhere). Checks the preset's name.
    pub fn new(preset: &str, device: Option<&str>, words: &[String]) -> Result<Self> {
        crate::config::preset(preset)?;
        let mut request = Request { preset: preset.to_owned(), variant: None, overrides: Vec::new() };
        for o in parse_overrides(words)? {
            match o.key.as_str() {
                "variant" => request.variant = Some(o.value),
                "init" => match o.value.strip_prefix("hf:") {
                    Some(dir) => {
                        let dir = std::path::absolute(dir)?;
                        request
                            .overrides
                            .push(Override { key: o.key, value: format!("hf:{}", dir.display()) });
                    }
                    None => request.overrides.push(o),
                },
                _ => request.overrides.push(o),
            }
        }
        if let Some(device) = device {
            request.overrides.push(Override { key: "device".into(), value: device.to_owned() });
        }
        Ok(request)
    }

    /// The value the user gave `key`, if any (the last one counts).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.overrides.iter().rfind(|o| o.key == key).map(|o| o.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_picks_out_the_variant_and_the_device() {
        let words: Vec<String> = ["variant=normv1_1", "lr=3e-4", "init=hf:gpt2"].map(String::from).to_vec();
        let r = Request::new("small", Some("cuda:0"), &words).unwrap();
        assert_eq!(r.variant.as_deref(), Some("normv1_1"));
        assert_eq!(r.get("lr"), Some("3e-4"));
        assert_eq!(r.get("device"), Some("cuda:0"));
        assert!(r.get("init").unwrap().starts_with("hf:/"), "absolute");
        assert!(Request::new("tiyn", None, &[]).unwrap_err().to_string().contains("did you mean `tiny`"));
        assert!(Request::new("tiny", None, &["lr".into()])
            .unwrap_err()
            .to_string()
            .contains("not key=value"));
    }
}
