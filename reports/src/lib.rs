//! Reports for lmhost: the Arrow stats schema every run writes ([`stats`]), its writer
//! ([`StatsWriter`]) and a reader that keeps what a killed run flushed ([`read_stats`]).

pub mod stats;

pub use stats::{read_stats, Split, Stats, StatsError, StatsRow, StatsWriter};
