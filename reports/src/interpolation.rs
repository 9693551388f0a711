//! The table `lmhost interpolate` writes (`interpolation.arrows`): loss and accuracy at evenly
//! spaced α along (1 − α)·A + α·B, per evaluation split, with A and B named in the schema
//! metadata; and the barrier read off it (Frankle et al. 2020, §2: the highest loss on the path
//! minus the mean of the two ends' losses).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};

use crate::runs::ReportError;

/// The file name inside an interpolation folder.
pub const FILE_NAME: &str = "interpolation.arrows";

#[derive(Debug, Clone, PartialEq)]
pub struct InterpolationPoint {
    pub alpha: f64,
    /// `val` or `train`.
    pub split: String,
    pub loss: f64,
    pub accuracy: f64,
}

/// One interpolation between two runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Interpolation {
    /// The run folders at α = 0 and α = 1.
    pub a: String,
    pub b: String,
    /// The step both runs were branched from one parent at (`lmhost branch`), when they were.
    pub branched_at: Option<u64>,
    pub points: Vec<InterpolationPoint>,
}

/// What a report says of one split of an interpolation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Barrier {
    pub loss_a: f64,
    pub loss_b: f64,
    /// The highest loss on the path and the α where it is.
    pub peak: f64,
    pub peak_alpha: f64,
    /// `peak − (loss_a + loss_b) / 2`.
    pub barrier: f64,
    /// The largest rise above the straight line between the ends' losses,
    /// `max_α L(α) − ((1 − α) L(0) + α L(1))`: 0 when the path has no bump, however far apart
    /// the ends are (the barrier alone then shows half their difference).
    pub above_line: f64,
}

impl Interpolation {
    /// The splits evaluated, in the order first seen.
    pub fn splits(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in &self.points {
            if !out.contains(&p.split) {
                out.push(p.split.clone());
            }
        }
        out
    }

    /// (α, loss) along the path for one split.
    pub fn losses(&self, split: &str) -> Vec<(f64, f64)> {
        self.points.iter().filter(|p| p.split == split).map(|p| (p.alpha, p.loss)).collect()
    }

    pub fn barrier(&self, split: &str) -> Option<Barrier> {
        let line = self.losses(split);
        let (first, last) = (line.first()?, line.last()?);
        let peak =
            line.iter().copied().fold((f64::NAN, f64::NEG_INFINITY), |m, p| if p.1 > m.1 { p } else { m });
        let above_line =
            line.iter().map(|&(a, l)| l - ((1.0 - a) * first.1 + a * last.1)).fold(0.0, f64::max);
        Some(Barrier {
            loss_a: first.1,
            loss_b: last.1,
            peak: peak.1,
            peak_alpha: peak.0,
            barrier: peak.1 - (first.1 + last.1) / 2.0,
            above_line,
        })
    }

    /// `A ↔ B` by the runs' folder names.
    pub fn label(&self) -> String {
        let name =
            |p: &str| Path::new(p).file_name().map_or(p.to_owned(), |n| n.to_string_lossy().into_owned());
        format!("{} ↔ {}", name(&self.a), name(&self.b))
    }

    pub fn write(&self, path: &Path) -> Result<(), ReportError> {
        let floats = |f: fn(&InterpolationPoint) -> f64| {
            Arc::new(self.points.iter().map(f).collect::<Float64Array>()) as ArrayRef
        };
        let mut metadata =
            HashMap::from([("a".to_owned(), self.a.clone()), ("b".to_owned(), self.b.clone())]);
        if let Some(step) = self.branched_at {
            metadata.insert("branched_at".to_owned(), step.to_string());
        }
        let schema = Schema::new(vec![
            Field::new("alpha", DataType::Float64, false),
            Field::new("split", DataType::Utf8, false),
            Field::new("loss", DataType::Float64, false),
            Field::new("accuracy", DataType::Float64, false),
        ])
        .with_metadata(metadata);
        let split = self.points.iter().map(|p| Some(p.split.as_str())).collect::<StringArray>();
        let batch = RecordBatch::try_new(
            Arc::new(schema),
            vec![floats(|p| p.alpha), Arc::new(split), floats(|p| p.loss), floats(|p| p.accuracy)],
        )
        .map_err(|e| ReportError::Usage(format!("cannot build the interpolation table: {e}")))?;
        let io = |e: std::io::Error| ReportError::Io { path: path.display().to_string(), source: e };
        let mut bytes = Vec::new();
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut bytes, &batch.schema())
            .and_then(|mut w| w.write(&batch).map(|_| w))
            .map_err(|e| ReportError::Usage(format!("cannot write {}: {e}", path.display())))?;
        w.finish().map_err(|e| ReportError::Usage(format!("cannot write {}: {e}", path.display())))?;
        drop(w);
        // Temp file + rename: a reader never sees half a table.
        let tmp = path.with_extension("arrows.tmp");
        std::fs::write(&tmp, &bytes).map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }

    /// Reads a table `lmhost interpolate` wrote: the file itself or the folder holding it.
    pub fn read(path: &Path) -> Result<Self, ReportError> {
        let file: PathBuf = if path.is_dir() { path.join(FILE_NAME) } else { path.to_owned() };
        let bad = |reason: String| {
            ReportError::Usage(format!(
                "{} is not an interpolation table ({reason}); `lmhost interpolate` writes one",
                file.display()
            ))
        };
        let bytes = std::fs::read(&file)
            .map_err(|e| ReportError::Io { path: file.display().to_string(), source: e })?;
        let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)
            .map_err(|e| bad(e.to_string()))?;
        let metadata = reader.schema().metadata().clone();
        let (Some(a), Some(b)) = (metadata.get("a").cloned(), metadata.get("b").cloned()) else {
            return Err(bad("no run names in its schema".into()));
        };
        let mut points = Vec::new();
        for batch in reader {
            let batch = batch.map_err(|e| bad(e.to_string()))?;
            let column =
                |name: &str| batch.column_by_name(name).ok_or_else(|| bad(format!("no `{name}` column")));
            let floats = |name: &str| -> Result<Float64Array, ReportError> {
                column(name)?
                    .as_any()
                    .downcast_ref::<Float64Array>()
                    .cloned()
                    .ok_or_else(|| bad(format!("`{name}` is not float64")))
            };
            let (alpha, loss, accuracy) = (floats("alpha")?, floats("loss")?, floats("accuracy")?);
            let split = column("split")?
                .as_any()
                .downcast_ref::<StringArray>()
                .cloned()
                .ok_or_else(|| bad("`split` is not text".into()))?;
            for i in 0..batch.num_rows() {
                points.push(InterpolationPoint {
                    alpha: alpha.value(i),
                    split: split.value(i).to_owned(),
                    loss: loss.value(i),
                    accuracy: accuracy.value(i),
                });
            }
        }
        if points.is_empty() {
            return Err(bad("no rows".into()));
        }
        let branched_at = metadata.get("branched_at").and_then(|s| s.parse().ok());
        Ok(Self { a, b, branched_at, points })
    }
}

/// True when `path` is an interpolation table or a folder holding one.
pub fn is_interpolation(path: &Path) -> bool {
    path.join(FILE_NAME).is_file() || path.file_name().is_some_and(|n| n == FILE_NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_round_trips_and_gives_its_barrier() {
        let dir = tempfile::tempdir().unwrap();
        let points = (0..5)
            .flat_map(|i| {
                let alpha = i as f64 / 4.0;
                let bump = 4.0 * alpha * (1.0 - alpha); // 1 at α = ½
                [("val", 3.0 + bump + alpha * 0.2), ("train", 2.0 + 0.5 * bump)].map(|(split, loss)| {
                    InterpolationPoint { alpha, split: split.into(), loss, accuracy: 0.3 }
                })
            })
            .collect();
        let table = Interpolation { a: "runs/x".into(), b: "runs/y".into(), branched_at: Some(7), points };
        table.write(&dir.path().join(FILE_NAME)).unwrap();
        assert!(is_interpolation(dir.path()));
        let back = Interpolation::read(dir.path()).unwrap();
        assert_eq!(back, table);
        assert_eq!(back.splits(), vec!["val", "train"]);
        let val = back.barrier("val").unwrap();
        assert_eq!((val.loss_a, val.loss_b, val.peak_alpha), (3.0, 3.2, 0.5));
        assert!((val.barrier - (4.1 - 3.1)).abs() < 1e-12);
        assert!((val.above_line - (4.1 - 3.1)).abs() < 1e-12, "the bump at ½ over the line's 3.1");
        assert!((back.barrier("train").unwrap().barrier - 0.5).abs() < 1e-12);
        assert_eq!(back.label(), "x ↔ y");

        std::fs::write(dir.path().join("junk.arrows"), b"not arrow").unwrap();
        let err = Interpolation::read(&dir.path().join("junk.arrows")).unwrap_err().to_string();
        assert!(err.contains("is not an interpolation table"), "{err}");
    }
}
