//! The manifest beside a model file: what the model is and the shapes it promises.
//!
//! ```toml
//! name = "default"                 # the registry key
//! version = "1.0.0"                # shown in status and metrics; any non-empty string
//! file = "model.onnx"              # relative to the manifest's directory
//! description = "..."              # optional
//! batch_max = 64                   # optional: largest batch run at once (1..=1024), default 64
//!
//! [input]
//! name = "features"                # the ONNX graph input's name
//! shape = ["batch", 27]            # "batch" first, then fixed sizes
//!
//! [output]
//! name = "next_count"
//! shape = ["batch", 1]
//! ```
//!
//! Unknown keys are refused, with the key named, so a typo never silently changes a model.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::LoadError;
use crate::model::BATCH_MAX_LIMIT;

/// One dimension of a declared shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// The batch dimension (`"batch"` in the manifest): any size, chosen per run.
    Batch,
    /// A fixed size.
    Fixed(usize),
}

impl fmt::Display for Dim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dim::Batch => f.write_str("batch"),
            Dim::Fixed(n) => write!(f, "{n}"),
        }
    }
}

impl<'de> Deserialize<'de> for Dim {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Size(u64),
            Name(String),
        }
        match Raw::deserialize(d)? {
            Raw::Size(n) => usize::try_from(n)
                .map(Dim::Fixed)
                .map_err(|_| serde::de::Error::custom(format!("dimension {n} is too large"))),
            Raw::Name(s) if s == "batch" => Ok(Dim::Batch),
            Raw::Name(s) => Err(serde::de::Error::custom(format!(
                "dimension `{s}` is neither a size nor \"batch\""
            ))),
        }
    }
}

/// Formats a shape as `[batch, 27]`.
pub(crate) fn shape_string(dims: &[Dim]) -> String {
    let inner: Vec<String> = dims.iter().map(Dim::to_string).collect();
    format!("[{}]", inner.join(", "))
}

/// One input or output tensor of a model.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    /// The tensor's name in the ONNX graph.
    pub name: String,
    /// Its shape: `Batch` first, then fixed sizes. Elements are float32.
    pub shape: Vec<Dim>,
}

impl TensorSpec {
    /// The values in one row (the product of the fixed dimensions).
    pub fn row_width(&self) -> usize {
        self.shape
            .iter()
            .map(|d| match d {
                Dim::Batch => 1,
                Dim::Fixed(n) => *n,
            })
            .product()
    }
}

fn default_batch_max() -> usize {
    64
}

/// A model's manifest (`model.toml`). See the module docs for the format.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The registry key, e.g. `default`.
    pub name: String,
    /// The model's version, e.g. `1.0.0`.
    pub version: String,
    /// The ONNX file, relative to the manifest's directory.
    pub file: PathBuf,
    /// What the model predicts.
    #[serde(default)]
    pub description: String,
    /// The largest batch run at once; larger requests are cut into chunks. Default 64.
    #[serde(default = "default_batch_max")]
    pub batch_max: usize,
    /// The input tensor.
    pub input: TensorSpec,
    /// The output tensor.
    pub output: TensorSpec,
}

/// What a caller expects of a model: the per-row shapes of its input and output (the dimensions
/// after `batch`). The node passes [`crate::features::SIGNATURE`] for the default model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    /// Input dimensions after the batch dimension.
    pub input: &'static [usize],
    /// Output dimensions after the batch dimension.
    pub output: &'static [usize],
}

impl Manifest {
    /// Reads and checks a manifest file.
    ///
    /// # Errors
    ///
    /// [`LoadError::Io`], [`LoadError::Manifest`] (with the key) or [`LoadError::ManifestValue`].
    pub fn from_file(path: &Path) -> Result<Self, LoadError> {
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and checks manifest text; `path` is only used in errors.
    ///
    /// # Errors
    ///
    /// [`LoadError::Manifest`] or [`LoadError::ManifestValue`].
    pub fn parse(text: &str, path: &Path) -> Result<Self, LoadError> {
        let m: Manifest = toml::from_str(text).map_err(|e| LoadError::Manifest {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        m.check(path)?;
        Ok(m)
    }

    fn check(&self, path: &Path) -> Result<(), LoadError> {
        let bad = |problem: String| LoadError::ManifestValue {
            path: path.to_owned(),
            problem,
        };
        if self.name.is_empty() || self.name.len() > 128 || self.name.contains('/') {
            return Err(bad(format!(
                "name `{}` must be 1 to 128 characters without `/`",
                self.name
            )));
        }
        if self.version.is_empty() {
            return Err(bad("version is empty".into()));
        }
        if !(1..=BATCH_MAX_LIMIT).contains(&self.batch_max) {
            return Err(bad(format!(
                "batch_max is {}; it must be between 1 and {BATCH_MAX_LIMIT}",
                self.batch_max
            )));
        }
        for (what, spec) in [("input", &self.input), ("output", &self.output)] {
            let ok = spec.shape.first() == Some(&Dim::Batch)
                && spec.shape[1..]
                    .iter()
                    .all(|d| matches!(d, Dim::Fixed(n) if *n > 0));
            if !ok {
                return Err(bad(format!(
                    "{what} shape {} must be \"batch\" followed by sizes of at least 1",
                    shape_string(&spec.shape)
                )));
            }
        }
        Ok(())
    }

    /// Checks the manifest's shapes against what the caller expects.
    ///
    /// # Errors
    ///
    /// [`LoadError::ShapeMismatch`] naming the manifest.
    pub fn check_signature(&self, expected: &Signature, path: &Path) -> Result<(), LoadError> {
        for (what, spec, want) in [
            ("input", &self.input, expected.input),
            ("output", &self.output, expected.output),
        ] {
            let mut want_dims = vec![Dim::Batch];
            want_dims.extend(want.iter().map(|n| Dim::Fixed(*n)));
            if spec.shape != want_dims {
                return Err(LoadError::ShapeMismatch {
                    path: path.to_owned(),
                    what: format!("{what} \"{}\"", spec.name),
                    found: shape_string(&spec.shape),
                    expected: shape_string(&want_dims),
                    source_of_truth: "the caller",
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "default"
version = "1.0.0"
file = "model.onnx"
[input]
name = "features"
shape = ["batch", 27]
[output]
name = "next_count"
shape = ["batch", 1]
"#;

    #[test]
    fn a_manifest_parses_with_defaults() {
        let m = Manifest::parse(GOOD, Path::new("m.toml")).expect("parses");
        assert_eq!(m.batch_max, 64);
        assert_eq!(m.input.shape, vec![Dim::Batch, Dim::Fixed(27)]);
        assert_eq!(m.input.row_width(), 27);
        assert_eq!(shape_string(&m.output.shape), "[batch, 1]");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_file_and_key() {
        let e = Manifest::parse(&GOOD.replace("version", "verson"), Path::new("x/m.toml"))
            .expect_err("unknown key");
        let s = e.to_string();
        assert!(s.contains("x/m.toml") && s.contains("verson"), "{s}");
        let e = Manifest::parse(
            &GOOD.replace("[\"batch\", 27]", "[27, \"batch\"]"),
            Path::new("m.toml"),
        )
        .expect_err("batch not first");
        assert!(matches!(e, LoadError::ManifestValue { .. }), "{e}");
        let e = Manifest::parse(
            &GOOD.replace("[\"batch\", 27]", "[\"batch\", \"rows\"]"),
            Path::new("m.toml"),
        )
        .expect_err("named dim");
        assert!(e.to_string().contains("rows"), "{e}");
        let e = Manifest::parse(&format!("batch_max = 0\n{GOOD}"), Path::new("m.toml"))
            .expect_err("batch_max");
        assert!(e.to_string().contains("batch_max"), "{e}");
    }

    #[test]
    fn the_signature_check_names_both_shapes() {
        let m = Manifest::parse(GOOD, Path::new("m.toml")).expect("parses");
        let ok = Signature {
            input: &[27],
            output: &[1],
        };
        m.check_signature(&ok, Path::new("m.toml"))
            .expect("matches");
        let other = Signature {
            input: &[48],
            output: &[1],
        };
        let e = m
            .check_signature(&other, Path::new("m.toml"))
            .expect_err("mismatch");
        let s = e.to_string();
        assert!(
            s.contains("[batch, 27]") && s.contains("[batch, 48]"),
            "{s}"
        );
    }
}
