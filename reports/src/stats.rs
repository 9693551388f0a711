//! The stats of a run: one Arrow schema, written as an IPC stream (`stats.arrows`) with one
//! record batch per logging interval, so a killed run keeps everything it flushed.
//!
//! Columns (schema version 2; pyarrow, polars and DuckDB read the file as it is):
//!
//! | column | type | meaning |
//! | --- | --- | --- |
//! | `step` | uint64 | optimiser steps taken when the row was measured |
//! | `tokens` | uint64 | training tokens seen at that step |
//! | `wall_s` | float64 | seconds since the run started |
//! | `split` | utf8 | `train` or `val` |
//! | `loss` | float64 | cross-entropy, nats per token (null on metric rows) |
//! | `accuracy` | float64 | fraction of next tokens that were the argmax |
//! | `lr` | float64 | learning rate of that step |
//! | `grad_norm` | float64 | gradient L2 norm before clipping (train rows) |
//! | `tokens_per_s` | float64 | training throughput over the last logging interval |
//! | `metric` | utf8 | name of a plugin's extra metric; null on loss rows |
//! | `value` | float64 | the extra metric's value |
//! | `stage` | utf8 | the training plan's stage (null without a plan); new in version 2 |
//!
//! Extra metrics are stored long: one row per (step, metric), with the loss columns null.
//! Schema metadata: `lmhost.stats_version` and `lmhost.run` (the run's identity as JSON).

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, DataType, Field, Schema};

/// The schema version this build writes; readers refuse newer ones.
pub const STATS_VERSION: u32 = 2;
pub const VERSION_KEY: &str = "lmhost.stats_version";
pub const RUN_KEY: &str = "lmhost.run";

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path} is not an lmhost stats file ({reason})")]
    NotStats { path: String, reason: String },
    #[error("{path} was written with stats schema version {found}; this lmhost reads up to {STATS_VERSION}: upgrade lmhost")]
    FutureVersion { path: String, found: u32 },
    #[error("writing stats: {0}")]
    Arrow(#[from] ArrowError),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }
}

/// One row of `stats.arrows`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatsRow {
    pub step: u64,
    pub tokens: u64,
    pub wall_s: f64,
    pub split: Split,
    pub loss: Option<f64>,
    pub accuracy: Option<f64>,
    pub lr: Option<f64>,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub metric: Option<String>,
    pub value: Option<f64>,
    /// The plan stage the row belongs to.
    pub stage: Option<String>,
}

impl StatsRow {
    /// Where and when a row was measured; fill in the rest with struct update syntax.
    pub fn at(step: u64, tokens: u64, wall_s: f64, split: Split) -> Self {
        Self {
            step,
            tokens,
            wall_s,
            split,
            loss: None,
            accuracy: None,
            lr: None,
            grad_norm: None,
            tokens_per_s: None,
            metric: None,
            value: None,
            stage: None,
        }
    }

    /// An extra metric measured on the training run.
    pub fn metric(step: u64, tokens: u64, wall_s: f64, name: &str, value: f64) -> Self {
        Self {
            metric: Some(name.to_owned()),
            value: Some(value),
            ..Self::at(step, tokens, wall_s, Split::Train)
        }
    }
}

pub fn schema(metadata: HashMap<String, String>) -> Schema {
    let f = |name: &str, t: DataType, nullable: bool| Field::new(name, t, nullable);
    let mut metadata = metadata;
    metadata.insert(VERSION_KEY.into(), STATS_VERSION.to_string());
    Schema::new(vec![
        f("step", DataType::UInt64, false),
        f("tokens", DataType::UInt64, false),
        f("wall_s", DataType::Float64, false),
        f("split", DataType::Utf8, false),
        f("loss", DataType::Float64, true),
        f("accuracy", DataType::Float64, true),
        f("lr", DataType::Float64, true),
        f("grad_norm", DataType::Float64, true),
        f("tokens_per_s", DataType::Float64, true),
        f("metric", DataType::Utf8, true),
        f("value", DataType::Float64, true),
        f("stage", DataType::Utf8, true),
    ])
    .with_metadata(metadata)
}

/// Appends rows to `stats.arrows`, one record batch per [`flush`](Self::flush).
pub struct StatsWriter {
    writer: Option<StreamWriter<BufWriter<File>>>,
    schema: Arc<Schema>,
    pending: Vec<StatsRow>,
}

impl StatsWriter {
    /// Creates the file; `run` (JSON) goes into the schema metadata under `lmhost.run`.
    pub fn create(path: &Path, run: &str) -> Result<Self, StatsError> {
        let file = File::create(path).map_err(|e| io(path, e))?;
        let schema = Arc::new(schema(HashMap::from([(RUN_KEY.to_owned(), run.to_owned())])));
        let mut writer = StreamWriter::try_new(BufWriter::new(file), &schema)?;
        writer.flush()?;
        Ok(Self { writer: Some(writer), schema, pending: Vec::new() })
    }

    /// Replaces the file at `path` with `rows` (written to a temporary file, then renamed into
    /// place, so a crash leaves the old file or the new one) and keeps appending to it: how a
    /// resumed run drops the rows measured after its checkpoint.
    pub fn rewrite(path: &Path, run: &str, rows: Vec<StatsRow>) -> Result<Self, StatsError> {
        let tmp = path.with_extension("arrows.tmp");
        let mut writer = Self::create(&tmp, run)?;
        writer.pending = rows;
        writer.flush()?;
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))?;
        Ok(writer)
    }

    pub fn push(&mut self, row: StatsRow) {
        self.pending.push(row);
    }

    /// Writes the pending rows as one record batch and pushes them to the file.
    pub fn flush(&mut self) -> Result<(), StatsError> {
        let Some(writer) = self.writer.as_mut() else {
            return Ok(());
        };
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = to_batch(&self.schema, &self.pending)?;
        writer.write(&batch)?;
        writer.flush()?;
        writer
            .get_mut()
            .get_mut()
            .sync_data()
            .map_err(|e| StatsError::Io { path: "stats".into(), source: e })?;
        self.pending.clear();
        Ok(())
    }

    /// Flushes and writes the end-of-stream marker.
    pub fn finish(mut self) -> Result<(), StatsError> {
        self.flush()?;
        if let Some(mut w) = self.writer.take() {
            w.finish()?;
            w.flush()?;
        }
        Ok(())
    }
}

impl Drop for StatsWriter {
    fn drop(&mut self) {
        // An unfinished writer (an error path) still keeps every row it was given.
        let _ = self.flush();
    }
}

fn to_batch(schema: &Arc<Schema>, rows: &[StatsRow]) -> Result<RecordBatch, ArrowError> {
    let u = |f: fn(&StatsRow) -> u64| Arc::new(rows.iter().map(f).collect::<UInt64Array>()) as ArrayRef;
    let opt =
        |f: fn(&StatsRow) -> Option<f64>| Arc::new(rows.iter().map(f).collect::<Float64Array>()) as ArrayRef;
    let columns = vec![
        u(|r| r.step),
        u(|r| r.tokens),
        Arc::new(rows.iter().map(|r| r.wall_s).collect::<Float64Array>()) as ArrayRef,
        Arc::new(rows.iter().map(|r| Some(r.split.as_str())).collect::<StringArray>()) as ArrayRef,
        opt(|r| r.loss),
        opt(|r| r.accuracy),
        opt(|r| r.lr),
        opt(|r| r.grad_norm),
        opt(|r| r.tokens_per_s),
        Arc::new(rows.iter().map(|r| r.metric.as_deref()).collect::<StringArray>()) as ArrayRef,
        opt(|r| r.value),
        Arc::new(rows.iter().map(|r| r.stage.as_deref()).collect::<StringArray>()) as ArrayRef,
    ];
    RecordBatch::try_new(schema.clone(), columns)
}

/// What a stats file holds, and whether it was read to its end.
#[derive(Debug, Clone)]
pub struct Stats {
    pub rows: Vec<StatsRow>,
    pub metadata: HashMap<String, String>,
    /// The end-of-stream marker was read: the writer finished cleanly.
    pub finished: bool,
    /// Why reading stopped early (a torn last batch of a killed run), if it did.
    pub torn: Option<String>,
}

impl Stats {
    pub fn split(&self, split: Split) -> impl Iterator<Item = &StatsRow> {
        self.rows.iter().filter(move |r| r.split == split && r.metric.is_none())
    }
}

/// Reads every whole record batch; a torn tail is reported in [`Stats::torn`], not an error.
pub fn read_stats(path: &Path) -> Result<Stats, StatsError> {
    let bytes = std::fs::read(path).map_err(|e| io(path, e))?;
    // The reader treats a plain end of file like the end-of-stream marker; only the marker
    // (continuation 0xFFFFFFFF, length 0) says the writer finished.
    let marked_end = bytes.ends_with(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    let not_stats = |reason: String| StatsError::NotStats { path: path.display().to_string(), reason };
    let mut reader =
        StreamReader::try_new(std::io::Cursor::new(bytes), None).map_err(|e| not_stats(e.to_string()))?;
    let schema = reader.schema();
    let metadata: HashMap<String, String> = schema.metadata().clone().into_iter().collect();
    let version: u32 = metadata
        .get(VERSION_KEY)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| not_stats(format!("no {VERSION_KEY} in its schema")))?;
    if version > STATS_VERSION {
        return Err(StatsError::FutureVersion { path: path.display().to_string(), found: version });
    }
    let mut rows = Vec::new();
    let mut torn = None;
    for batch in reader.by_ref() {
        match batch.map_err(|e| e.to_string()).and_then(|b| from_batch(&b)) {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => {
                torn = Some(format!("stopped after {} rows: {e}", rows.len()));
                break;
            }
        }
    }
    Ok(Stats { rows, metadata, finished: torn.is_none() && marked_end, torn })
}

fn from_batch(b: &RecordBatch) -> Result<Vec<StatsRow>, String> {
    fn col<'a, T: 'static>(b: &'a RecordBatch, name: &str) -> Result<&'a T, String> {
        b.column_by_name(name)
            .and_then(|c| c.as_any().downcast_ref::<T>())
            .ok_or_else(|| format!("column `{name}` is missing or has the wrong type"))
    }
    let step = col::<UInt64Array>(b, "step")?;
    let tokens = col::<UInt64Array>(b, "tokens")?;
    let wall = col::<Float64Array>(b, "wall_s")?;
    let split = col::<StringArray>(b, "split")?;
    let f = |name| col::<Float64Array>(b, name);
    let (loss, acc, lr, gn, tps, value) =
        (f("loss")?, f("accuracy")?, f("lr")?, f("grad_norm")?, f("tokens_per_s")?, f("value")?);
    let metric = col::<StringArray>(b, "metric")?;
    // Version 1 files have no stage column.
    let stage = b.column_by_name("stage").and_then(|c| c.as_any().downcast_ref::<StringArray>());
    let get = |a: &Float64Array, i: usize| (!a.is_null(i)).then(|| a.value(i));
    (0..b.num_rows())
        .map(|i| {
            Ok(StatsRow {
                step: step.value(i),
                tokens: tokens.value(i),
                wall_s: wall.value(i),
                split: match split.value(i) {
                    "train" => Split::Train,
                    "val" => Split::Val,
                    other => return Err(format!("unknown split `{other}`")),
                },
                loss: get(loss, i),
                accuracy: get(acc, i),
                lr: get(lr, i),
                grad_norm: get(gn, i),
                tokens_per_s: get(tps, i),
                metric: (!metric.is_null(i)).then(|| metric.value(i).to_owned()),
                value: get(value, i),
                stage: stage.filter(|s| !s.is_null(i)).map(|s| s.value(i).to_owned()),
            })
        })
        .collect()
}

fn io(path: &Path, e: std::io::Error) -> StatsError {
    StatsError::Io { path: path.display().to_string(), source: e }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(step: u64) -> StatsRow {
        StatsRow {
            loss: Some(4.0 - step as f64 * 0.1),
            accuracy: Some(0.1),
            lr: Some(6e-4),
            grad_norm: Some(1.5),
            tokens_per_s: Some(2000.0),
            ..StatsRow::at(step, step * 1024, step as f64 * 0.5, Split::Train)
        }
    }

    #[test]
    fn rows_round_trip_and_a_finished_stream_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.arrows");
        let mut w = StatsWriter::create(&path, r#"{"id":"x"}"#).unwrap();
        w.push(row(1));
        w.push(StatsRow::metric(1, 1024, 0.5, "kurtosis.h0", 3.5));
        w.flush().unwrap();
        w.push(StatsRow { loss: Some(3.9), accuracy: Some(0.2), ..StatsRow::at(2, 2048, 1.0, Split::Val) });
        w.finish().unwrap();
        let s = read_stats(&path).unwrap();
        assert!(s.finished && s.torn.is_none());
        assert_eq!(s.rows.len(), 3);
        assert_eq!(s.rows[0], row(1));
        assert_eq!(s.rows[1].metric.as_deref(), Some("kurtosis.h0"));
        assert_eq!(s.split(Split::Val).count(), 1);
        assert_eq!(s.metadata[RUN_KEY], r#"{"id":"x"}"#);
    }

    #[test]
    fn a_torn_tail_keeps_the_whole_batches_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.arrows");
        let mut w = StatsWriter::create(&path, "{}").unwrap();
        for step in 0..3 {
            w.push(row(step));
            w.flush().unwrap();
        }
        drop(w); // killed: no end-of-stream marker
        let s = read_stats(&path).unwrap();
        assert_eq!(s.rows.len(), 3);
        assert!(!s.finished);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 40]).unwrap();
        let s = read_stats(&path).unwrap();
        assert_eq!(s.rows.len(), 2);
        assert!(s.torn.is_some(), "{s:?}");
    }

    #[test]
    fn other_files_and_future_versions_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.arrows");
        std::fs::write(&path, b"not arrow at all").unwrap();
        assert!(matches!(read_stats(&path), Err(StatsError::NotStats { .. })));
        let mut future = schema(HashMap::new());
        future.metadata.insert(VERSION_KEY, "99");
        let file = File::create(&path).unwrap();
        let mut w = StreamWriter::try_new(file, &future).unwrap();
        w.finish().unwrap();
        let err = read_stats(&path).unwrap_err();
        assert!(matches!(err, StatsError::FutureVersion { found: 99, .. }), "{err}");
    }

    #[test]
    fn version_one_files_without_a_stage_column_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.arrows");
        let current = schema(HashMap::new());
        let v1_fields: Vec<Field> =
            current.fields().iter().filter(|f| f.name() != "stage").map(|f| f.as_ref().clone()).collect();
        let v1 =
            Arc::new(Schema::new(v1_fields).with_metadata(HashMap::from([(VERSION_KEY.into(), "1".into())])));
        let full =
            to_batch(&Arc::new(current), &[StatsRow { stage: Some("warm".into()), ..row(1) }]).unwrap();
        let batch =
            RecordBatch::try_new(v1.clone(), full.columns()[..full.num_columns() - 1].to_vec()).unwrap();
        let mut w = StreamWriter::try_new(File::create(&path).unwrap(), &v1).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        let s = read_stats(&path).unwrap();
        assert_eq!(s.rows, vec![row(1)]);
        // And the current version keeps the stage.
        let mut w = StatsWriter::create(&path, "{}").unwrap();
        w.push(StatsRow { stage: Some("warm".into()), ..row(1) });
        w.finish().unwrap();
        assert_eq!(read_stats(&path).unwrap().rows[0].stage.as_deref(), Some("warm"));
    }
}
