//! Reports for lmhost: the Arrow stats schema every run writes ([`stats`]), its writer
//! ([`StatsWriter`]) and a reader that keeps what a killed run flushed ([`read_stats`]), and the
//! comparison of runs: replicates grouped and tested against the baseline ([`Comparison`]), and
//! written out as an HTML page, Markdown tables, JSON numbers and SVG/PNG plots
//! ([`write_report`]), with linear-mode-connectivity tables beside them ([`Interpolation`]);
//! and the reports of studies ([`study`]): a tune's best against best ([`tune`]) and a ladder's
//! scaling laws and compute multiplier ([`ladder`], [`scaling`]).

pub mod compare;
pub mod interpolation;
pub mod ladder;
pub mod plot;
pub mod png;
pub mod report;
pub mod runs;
pub mod scaling;
pub mod statistics;
pub mod stats;
pub mod study;
pub mod tune;

pub use compare::{Band, CompareOptions, Comparison, Summary, XAxis};
pub use interpolation::{is_interpolation, Interpolation, InterpolationPoint};
pub use report::{write_report, ReportFiles};
pub use runs::{ReportError, Run};
pub use stats::{read_stats, Split, Stats, StatsError, StatsRow, StatsWriter};
pub use study::{is_study, write_study_report, StudyKind, StudyManifest};
