//! The stats of a run: one Arrow schema, written as an IPC stream (`stats.arrows`) with one
//! record batch per logging interval, so a killed run keeps everything it flushed; when the run
//! ends, the same rows also go to `stats.parquet`, which pandas, polars and DuckDB open as it is.
//!
//! Each column is declared once, as a field of [`StatsRow`] with its doc comment: the schema,
//! the writer, the reader and [`COLUMNS`] (what `README.md` lists) all come from that
//! declaration. Extra metrics are stored long: one row per (step, metric), with the loss columns
//! null. Schema metadata: `lmhost.stats_version` and `lmhost.run` (the run's identity as JSON).
//!
//! Versions: 1 the first; 2 added `stage`; 3 stores `step` and `tokens` as int64 (uint64
//! before, which wraps in polars and overflows in DuckDB on `step - 10`); 4 added `flops`.
//! Every older version still reads.

use std::collections::HashMap;
use std::fs::File;
use std::io::BufWriter;
use std::path::Path;
use std::sync::Arc;

use arrow_array::{Array, ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;
use arrow_schema::{ArrowError, DataType, Field, Schema};

/// The schema version this build writes; readers refuse newer ones.
pub const STATS_VERSION: u32 = 4;
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
    #[error("writing {path}: {reason}")]
    Parquet { path: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Split {
    /// The training batches, one row per step (not one `compare --split` tests on).
    #[value(skip)]
    Train,
    Val,
    /// The held-out test split, evaluated once after the last step.
    Test,
}

impl Split {
    pub fn as_str(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// How a Rust type is stored in an Arrow column, and read back.
pub trait ColumnValue: Sized {
    const DATA_TYPE: DataType;
    const NULLABLE: bool;
    fn to_array(values: Vec<Self>) -> ArrayRef;
    fn read(array: &dyn Array, row: usize) -> Result<Self, String>;
    /// The value of a column an older file does not have; `None`: the column is required.
    fn absent() -> Option<Self> {
        None
    }
    /// The value as a number, for plotting (none for text).
    fn as_number(&self) -> Option<f64> {
        None
    }
}

/// Counts (steps, tokens): int64 in the file, read back from the uint64 of versions 1 and 2 too.
impl ColumnValue for u64 {
    const DATA_TYPE: DataType = DataType::Int64;
    const NULLABLE: bool = false;
    fn to_array(values: Vec<Self>) -> ArrayRef {
        Arc::new(values.into_iter().map(|v| v as i64).collect::<Int64Array>())
    }
    fn as_number(&self) -> Option<f64> {
        Some(*self as f64)
    }
    fn read(array: &dyn Array, row: usize) -> Result<Self, String> {
        if let Some(a) = array.as_any().downcast_ref::<Int64Array>() {
            return u64::try_from(a.value(row)).map_err(|_| format!("negative count {}", a.value(row)));
        }
        array
            .as_any()
            .downcast_ref::<UInt64Array>()
            .map(|a| a.value(row))
            .ok_or_else(|| "not an integer".into())
    }
}

impl ColumnValue for f64 {
    const DATA_TYPE: DataType = DataType::Float64;
    const NULLABLE: bool = false;
    fn as_number(&self) -> Option<f64> {
        Some(*self)
    }
    fn to_array(values: Vec<Self>) -> ArrayRef {
        Arc::new(values.into_iter().collect::<Float64Array>())
    }
    fn read(array: &dyn Array, row: usize) -> Result<Self, String> {
        array
            .as_any()
            .downcast_ref::<Float64Array>()
            .map(|a| a.value(row))
            .ok_or_else(|| "not a float64".into())
    }
}

impl ColumnValue for Option<f64> {
    const DATA_TYPE: DataType = DataType::Float64;
    const NULLABLE: bool = true;
    fn as_number(&self) -> Option<f64> {
        *self
    }
    fn to_array(values: Vec<Self>) -> ArrayRef {
        Arc::new(values.into_iter().collect::<Float64Array>())
    }
    fn read(array: &dyn Array, row: usize) -> Result<Self, String> {
        (!array.is_null(row)).then(|| f64::read(array, row)).transpose()
    }
    fn absent() -> Option<Self> {
        Some(None)
    }
}

impl ColumnValue for Option<String> {
    const DATA_TYPE: DataType = DataType::Utf8;
    const NULLABLE: bool = true;
    fn to_array(values: Vec<Self>) -> ArrayRef {
        Arc::new(values.iter().map(Option::as_deref).collect::<StringArray>())
    }
    fn read(array: &dyn Array, row: usize) -> Result<Self, String> {
        let strings = array.as_any().downcast_ref::<StringArray>().ok_or("not utf8")?;
        Ok((!strings.is_null(row)).then(|| strings.value(row).to_owned()))
    }
    fn absent() -> Option<Self> {
        Some(None)
    }
}

impl ColumnValue for Split {
    const DATA_TYPE: DataType = DataType::Utf8;
    const NULLABLE: bool = false;
    fn to_array(values: Vec<Self>) -> ArrayRef {
        Arc::new(values.iter().map(|s| Some(s.as_str())).collect::<StringArray>())
    }
    fn read(array: &dyn Array, row: usize) -> Result<Self, String> {
        match array.as_any().downcast_ref::<StringArray>().ok_or("not utf8")?.value(row) {
            "train" => Ok(Split::Train),
            "val" => Ok(Split::Val),
            "test" => Ok(Split::Test),
            other => Err(format!("unknown split `{other}`")),
        }
    }
}

/// One column as a reader of the file sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: &'static str,
    pub data_type: DataType,
    pub nullable: bool,
    pub doc: &'static str,
}

/// Declares the row type and, from each field, its column: name, Arrow type, doc, writer and
/// reader.
macro_rules! stats_columns {
    (
        $(#[$meta:meta])*
        pub struct $row:ident { $( $(#[doc = $doc:literal])* pub $field:ident: $ty:ty, )* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $row { $( $(#[doc = $doc])* pub $field: $ty, )* }

        /// Every column of the stats, in file order.
        pub fn columns() -> Vec<Column> {
            vec![$(Column {
                name: stringify!($field),
                data_type: <$ty as ColumnValue>::DATA_TYPE,
                nullable: <$ty as ColumnValue>::NULLABLE,
                doc: concat!($($doc),*).trim_ascii(),
            }),*]
        }

        impl $row {
            /// A numeric column's value by name (`None` for a null, text, or no such column).
            pub fn number(&self, column: &str) -> Option<f64> {
                match column {
                    $( stringify!($field) => ColumnValue::as_number(&self.$field), )*
                    _ => None,
                }
            }
        }

        fn to_batch(schema: &Arc<Schema>, rows: &[$row]) -> Result<RecordBatch, ArrowError> {
            let columns = vec![$(
                <$ty as ColumnValue>::to_array(rows.iter().map(|r| r.$field.clone()).collect()),
            )*];
            RecordBatch::try_new(schema.clone(), columns)
        }

        fn from_batch(b: &RecordBatch) -> Result<Vec<$row>, String> {
            $(
                let $field = b.column_by_name(stringify!($field));
                if $field.is_none() && <$ty as ColumnValue>::absent().is_none() {
                    return Err(format!("column `{}` is missing", stringify!($field)));
                }
            )*
            (0..b.num_rows())
                .map(|i| {
                    Ok($row { $(
                        $field: match $field {
                            Some(array) => <$ty as ColumnValue>::read(array.as_ref(), i)
                                .map_err(|e| format!("column `{}`: {e}", stringify!($field)))?,
                            None => <$ty as ColumnValue>::absent().expect("checked above"),
                        },
                    )* })
                })
                .collect()
        }
    };
}

stats_columns! {
    /// One row of the stats: a training step, an evaluation, or one extra metric at a step.
    pub struct StatsRow {
        /// Optimiser steps taken when the row was measured.
        pub step: u64,
        /// Training tokens seen at that step.
        pub tokens: u64,
        /// Training FLOPs spent by that step: tokens × the model's counted FLOPs per token
        /// (null for plugins built before plugin-api 0.1.3).
        pub flops: Option<f64>,
        /// Seconds since the run started (across resumes).
        pub wall_s: f64,
        /// `train`, `val` or `test` (once, after the last step, with `test_fraction`).
        pub split: Split,
        /// Cross-entropy, nats per token (null on metric rows).
        pub loss: Option<f64>,
        /// Fraction of next tokens that were the argmax.
        pub accuracy: Option<f64>,
        /// Learning rate of that step (null before the first).
        pub lr: Option<f64>,
        /// Gradient L2 norm before clipping (train rows).
        pub grad_norm: Option<f64>,
        /// Training throughput over the last logging interval.
        pub tokens_per_s: Option<f64>,
        /// Name of an extra metric (a plugin's, or the kit's kurtosis); null on loss rows.
        pub metric: Option<String>,
        /// The extra metric's value.
        pub value: Option<f64>,
        /// The training plan's stage and any resume overrides (null without either).
        pub stage: Option<String>,
    }
}

impl StatsRow {
    /// Where and when a row was measured; fill in the rest with struct update syntax.
    pub fn at(step: u64, tokens: u64, wall_s: f64, split: Split) -> Self {
        Self {
            step,
            tokens,
            flops: None,
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
    let mut metadata = metadata;
    metadata.insert(VERSION_KEY.into(), STATS_VERSION.to_string());
    Schema::new(
        columns().into_iter().map(|c| Field::new(c.name, c.data_type, c.nullable)).collect::<Vec<_>>(),
    )
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

/// Writes `stats.parquet` beside the stream at `stream` (`stats.arrows`), with every whole row
/// it holds in the current schema: the file pandas, polars and DuckDB read directly (none of
/// them opens an Arrow IPC stream). Through a temporary file and a rename.
pub fn write_table(stream: &Path) -> Result<std::path::PathBuf, StatsError> {
    let stats = read_stats(stream)?;
    let path = stream.with_extension("parquet");
    let tmp = stream.with_extension("parquet.tmp");
    let parquet = |e: parquet::errors::ParquetError| StatsError::Parquet {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    let schema = Arc::new(schema(stats.metadata.into_iter().filter(|(k, _)| k == RUN_KEY).collect()));
    let written = (|| {
        let file = File::create(&tmp).map_err(|e| io(&tmp, e))?;
        let properties = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            .build();
        let mut writer =
            parquet::arrow::ArrowWriter::try_new(file, schema.clone(), Some(properties)).map_err(parquet)?;
        writer.write(&to_batch(&schema, &stats.rows)?).map_err(parquet)?;
        writer.close().map_err(parquet)?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| path)
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
    fn counts_are_int64_and_the_uint64_of_version_two_still_reads() {
        let current = schema(HashMap::new());
        assert_eq!(current.field_with_name("step").unwrap().data_type(), &DataType::Int64);
        assert_eq!(current.field_with_name("tokens").unwrap().data_type(), &DataType::Int64);
        let names: Vec<&str> = columns().iter().map(|c| c.name).collect();
        assert_eq!(names[..5], ["step", "tokens", "flops", "wall_s", "split"]);
        assert!(columns().iter().all(|c| !c.doc.is_empty()), "every column has its doc");
        // A version-2 batch: the same columns with uint64 counts.
        let fields: Vec<Field> = current
            .fields()
            .iter()
            .map(|f| match f.name().as_str() {
                "step" | "tokens" => Field::new(f.name(), DataType::UInt64, false),
                _ => f.as_ref().clone(),
            })
            .collect();
        let v2 =
            Arc::new(Schema::new(fields).with_metadata(HashMap::from([(VERSION_KEY.into(), "2".into())])));
        let full = to_batch(&Arc::new(current), &[row(7)]).unwrap();
        let mut columns = full.columns().to_vec();
        columns[0] = Arc::new(UInt64Array::from(vec![7u64]));
        columns[1] = Arc::new(UInt64Array::from(vec![7 * 1024u64]));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.arrows");
        let mut w = StreamWriter::try_new(File::create(&path).unwrap(), &v2).unwrap();
        w.write(&RecordBatch::try_new(v2.clone(), columns).unwrap()).unwrap();
        w.finish().unwrap();
        let read = read_stats(&path).unwrap();
        assert_eq!(read.rows, vec![row(7)]);
        assert_eq!(read.rows[0].number("tokens"), Some(7168.0));
        assert_eq!(read.rows[0].number("metric"), None);
        // A version-3 batch has no `flops` column: it reads as null.
        let counted =
            to_batch(&Arc::new(schema(HashMap::new())), &[StatsRow { flops: Some(1e9), ..row(7) }]).unwrap();
        let keep: Vec<usize> =
            (0..counted.num_columns()).filter(|&i| counted.schema().field(i).name() != "flops").collect();
        let v3 = Arc::new(
            counted
                .schema()
                .project(&keep)
                .unwrap()
                .with_metadata(HashMap::from([(VERSION_KEY.into(), "3".into())])),
        );
        let batch =
            RecordBatch::try_new(v3.clone(), keep.iter().map(|&i| counted.column(i).clone()).collect())
                .unwrap();
        let mut w = StreamWriter::try_new(File::create(&path).unwrap(), &v3).unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        let read = read_stats(&path).unwrap();
        assert_eq!(read.rows, vec![StatsRow { flops: None, ..row(7) }]);
    }

    #[test]
    fn a_finished_stream_is_also_written_as_parquet() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stats.arrows");
        let mut w = StatsWriter::create(&path, r#"{"id":"x"}"#).unwrap();
        for step in 1..=3 {
            w.push(row(step));
        }
        w.finish().unwrap();
        let table = write_table(&path).unwrap();
        assert_eq!(table, dir.path().join("stats.parquet"));
        let file = File::open(&table).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file).unwrap();
        let batches: Vec<RecordBatch> = reader.build().unwrap().collect::<Result<_, _>>().unwrap();
        assert_eq!(from_batch(&batches[0]).unwrap(), (1..=3).map(row).collect::<Vec<_>>());
        assert!(!dir.path().join("stats.parquet.tmp").exists());
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
