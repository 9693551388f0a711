//! Configuration knobs, each declared once: name, type, default and help come from one line of a
//! [`knobs!`] struct, and `--help`, `key=value` overrides, `lmhost describe`, the run's resolved
//! config and reports all read that declaration.

use serde_json::{Map, Value};

/// A type a knob can have.
pub trait KnobType: Sized {
    /// `int`, `float`, `bool`, `string` or `enum`.
    const KIND: &'static str;
    fn to_json(&self) -> Value;
    fn from_json(value: &Value) -> Result<Self, String>;
    /// Allowed values of an `enum` knob.
    fn choices() -> Vec<&'static str> {
        Vec::new()
    }
}

macro_rules! int_knob {
    ($($t:ty),*) => {$(
        impl KnobType for $t {
            const KIND: &'static str = "int";
            fn to_json(&self) -> Value {
                Value::from(*self)
            }
            fn from_json(value: &Value) -> ::std::result::Result<Self, String> {
                value
                    .as_u64()
                    .and_then(|v| <$t>::try_from(v).ok())
                    .ok_or_else(|| format!("expected a non-negative integer, got {value}"))
            }
        }
    )*};
}
int_knob!(usize, u32, u64);

impl KnobType for f64 {
    const KIND: &'static str = "float";
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
    fn from_json(value: &Value) -> ::std::result::Result<Self, String> {
        value
            .as_f64()
            .filter(|v| v.is_finite())
            .ok_or_else(|| format!("expected a finite number, got {value}"))
    }
}

impl KnobType for bool {
    const KIND: &'static str = "bool";
    fn to_json(&self) -> Value {
        Value::from(*self)
    }
    fn from_json(value: &Value) -> ::std::result::Result<Self, String> {
        value.as_bool().ok_or_else(|| format!("expected true or false, got {value}"))
    }
}

impl KnobType for String {
    const KIND: &'static str = "string";
    fn to_json(&self) -> Value {
        Value::from(self.as_str())
    }
    fn from_json(value: &Value) -> ::std::result::Result<Self, String> {
        value.as_str().map(str::to_owned).ok_or_else(|| format!("expected a string, got {value}"))
    }
}

/// One declared knob, as shown to users and sent across the plugin boundary.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct FieldSpec {
    pub name: String,
    /// `int`, `float`, `bool`, `string` or `enum`.
    pub kind: String,
    pub default: Value,
    pub choices: Vec<String>,
    pub help: String,
    /// The knob only observes (a logging or evaluation cadence, a checkpoint policy): it never
    /// changes a run's numbers, so it is not part of what identifies a run, and runs that differ
    /// in it alone are replicates (STYLE.md 13). Declared `#[observes = true]` in [`knobs!`].
    #[serde(default)]
    pub observes: bool,
}

impl FieldSpec {
    /// A value as typed on the command line (`lr=3e-4`, `n_layer=6`, `gelu=tanh`) as the JSON this
    /// knob takes, checked as the knob's own type checks it.
    pub fn parse(&self, raw: &str) -> Result<Value, String> {
        let bad = |what: &str| format!("{}={raw}: expected {what}", self.name);
        let value = match self.kind.as_str() {
            "int" => {
                Value::from(raw.replace('_', "").parse::<u64>().map_err(|_| bad("a non-negative integer"))?)
            }
            "float" => match raw.parse::<f64>() {
                Ok(v) if v.is_finite() => Value::from(v),
                _ => return Err(bad("a finite number")),
            },
            "bool" => Value::from(raw.parse::<bool>().map_err(|_| bad("true or false"))?),
            "enum" if !self.choices.iter().any(|c| c == raw) => {
                return Err(bad(&format!("one of {}", self.choices.join(", "))))
            }
            _ => Value::from(raw),
        };
        Ok(value)
    }

    pub fn new<T: KnobType>(name: &str, default: &T, doc: &str, observes: bool) -> Self {
        let help = doc.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
        Self {
            name: name.to_owned(),
            kind: T::KIND.to_owned(),
            default: default.to_json(),
            choices: T::choices().into_iter().map(str::to_owned).collect(),
            help,
            observes,
        }
    }
}

/// A struct of knobs, written with [`knobs!`].
pub trait Knobs: Default + Clone + std::fmt::Debug {
    fn fields() -> Vec<FieldSpec>;
    /// Reads this struct's keys from `map` (defaults for absent keys); other keys are ignored,
    /// since a flat config holds several knob structs side by side.
    fn from_map(map: &Map<String, Value>) -> Result<Self, String>;
    fn to_map(&self) -> Map<String, Value>;
}

/// Declares a struct of knobs: each field's doc comment is its help, `= expr` its default, and
/// `#[observes = true]` after the doc marks a knob that never changes the numbers
/// ([`FieldSpec::observes`]).
///
/// ```
/// lmhost_kit::knobs! {
///     /// Value-norm placement.
///     pub struct Example {
///         /// How many widgets.
///         pub widgets: usize = 3,
///     }
/// }
/// use lmhost_kit::config::Knobs;
/// assert_eq!(Example::default().widgets, 3);
/// assert_eq!(Example::fields()[0].help, "How many widgets.");
/// ```
#[macro_export]
macro_rules! knobs {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[doc = $doc:literal])* $(#[observes = $observes:literal])? $fvis:vis $field:ident : $ty:ty = $default:expr ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $name {
            $( $(#[doc = $doc])* $fvis $field: $ty, )*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $( $field: $default, )* }
            }
        }

        impl $crate::config::Knobs for $name {
            fn fields() -> Vec<$crate::config::FieldSpec> {
                #[allow(unused_variables)]
                let defaults = Self::default();
                vec![$(
                    $crate::config::FieldSpec::new::<$ty>(
                        stringify!($field),
                        &defaults.$field,
                        concat!($($doc, "\n"),*),
                        false $(|| $observes)?,
                    )
                ),*]
            }

            #[allow(unused_variables, unused_mut)]
            fn from_map(
                map: &$crate::serde_json::Map<String, $crate::serde_json::Value>,
            ) -> ::std::result::Result<Self, String> {
                let mut out = Self::default();
                $(
                    if let Some(value) = map.get(stringify!($field)) {
                        out.$field = <$ty as $crate::config::KnobType>::from_json(value)
                            .map_err(|e| format!("{}: {e}", stringify!($field)))?;
                    }
                )*
                Ok(out)
            }

            #[allow(unused_mut)]
            fn to_map(&self) -> $crate::serde_json::Map<String, $crate::serde_json::Value> {
                let mut map = $crate::serde_json::Map::new();
                $(
                    map.insert(
                        stringify!($field).to_owned(),
                        $crate::config::KnobType::to_json(&self.$field),
                    );
                )*
                map
            }
        }
    };
}

/// Declares an enum usable as a knob, written and parsed as its lower-case names.
///
/// ```
/// lmhost_kit::knob_enum! {
///     /// Where to apply it.
///     pub enum Placement { All = "all", First = "first" }
/// }
/// use lmhost_kit::config::KnobType;
/// assert_eq!(Placement::choices(), vec!["all", "first"]);
/// ```
#[macro_export]
macro_rules! knob_enum {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident { $( $(#[doc = $doc:literal])* $variant:ident = $text:literal ),* $(,)? }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name { $( $(#[doc = $doc])* $variant, )* }

        impl $name {
            pub fn as_str(&self) -> &'static str {
                match self { $( Self::$variant => $text, )* }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl $crate::config::KnobType for $name {
            const KIND: &'static str = "enum";
            fn to_json(&self) -> $crate::serde_json::Value {
                $crate::serde_json::Value::from(self.as_str())
            }
            fn from_json(value: &$crate::serde_json::Value) -> ::std::result::Result<Self, String> {
                match value.as_str() {
                    $( Some($text) => Ok(Self::$variant), )*
                    _ => Err(format!(
                        "expected one of {}, got {value}",
                        [$($text),*].join(", ")
                    )),
                }
            }
            fn choices() -> Vec<&'static str> {
                vec![$($text),*]
            }
        }
    };
}

/// Rejects keys that no knob struct declares, suggesting the nearest declared name.
pub fn reject_unknown_keys(map: &Map<String, Value>, fields: &[FieldSpec]) -> Result<(), String> {
    for key in map.keys() {
        if !fields.iter().any(|f| &f.name == key) {
            let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
            return Err(match closest(key, &names) {
                Some(near) => format!("unknown config key `{key}` (did you mean `{near}`?)"),
                None => format!("unknown config key `{key}`"),
            });
        }
    }
    Ok(())
}

/// The candidate nearest to `word` by edit distance, if it is near enough to be a typo.
pub fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= (c.len().max(word.len()) / 3).max(2))
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diag = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let up = row[j + 1];
            row[j + 1] = (diag + usize::from(ca != *cb)).min(row[j] + 1).min(up + 1);
            diag = up;
        }
    }
    row[b.len()]
}

crate::knobs! {
    /// For experiments that add no knobs of their own.
    pub struct NoKnobs {}
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::knob_enum! {
        enum Colour { Red = "red", Blue = "blue" }
    }

    crate::knobs! {
        struct Demo {
            /// Layers.
            /// Second line.
            layers: usize = 4,
            /// Learning rate.
            lr: f64 = 6e-4,
            colour: Colour = Colour::Red,
            /// How often to print.
            #[observes = true]
            every: u64 = 10,
        }
    }

    #[test]
    fn fields_carry_type_default_and_help() {
        let f = Demo::fields();
        assert_eq!(f[0].name, "layers");
        assert_eq!(f[0].kind, "int");
        assert_eq!(f[0].default, Value::from(4));
        assert_eq!(f[0].help, "Layers. Second line.");
        assert_eq!(f[2].choices, vec!["red", "blue"]);
        assert_eq!(f.iter().map(|f| f.observes).collect::<Vec<_>>(), [false, false, false, true]);
        assert_eq!(f[3].help, "How often to print.");
    }

    #[test]
    fn from_map_reads_own_keys_and_rejects_bad_values() {
        let map: Map<String, Value> =
            serde_json::from_str(r#"{"layers": 6, "colour": "blue", "other": 1}"#).unwrap();
        let d = Demo::from_map(&map).unwrap();
        assert_eq!((d.layers, d.colour, d.lr), (6, Colour::Blue, 6e-4));
        let bad: Map<String, Value> = serde_json::from_str(r#"{"layers": 2.5}"#).unwrap();
        assert!(Demo::from_map(&bad).unwrap_err().starts_with("layers:"));
        let bad: Map<String, Value> = serde_json::from_str(r#"{"colour": "green"}"#).unwrap();
        assert!(Demo::from_map(&bad).unwrap_err().contains("red, blue"));
    }

    #[test]
    fn round_trips_through_a_map() {
        let d = Demo { layers: 2, lr: 1e-3, colour: Colour::Blue, every: 3 };
        assert_eq!(Demo::from_map(&d.to_map()).unwrap(), d);
    }

    #[test]
    fn unknown_keys_get_a_suggestion() {
        let map: Map<String, Value> = serde_json::from_str(r#"{"layres": 6}"#).unwrap();
        let err = reject_unknown_keys(&map, &Demo::fields()).unwrap_err();
        assert_eq!(err, "unknown config key `layres` (did you mean `layers`?)");
        let map: Map<String, Value> = serde_json::from_str(r#"{"zzzzzzzz": 6}"#).unwrap();
        assert_eq!(reject_unknown_keys(&map, &Demo::fields()).unwrap_err(), "unknown config key `zzzzzzzz`");
    }
}
