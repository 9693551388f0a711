//! Learning-rate schedules: linear warmup, then constant, cosine or linear decay to
//! `min_lr_ratio × lr`, counted in steps or in tokens seen (mup-lr-warmup counts tokens).

use crate::config::{RunConfig, Schedule, WarmupUnit};

#[derive(Debug, Clone)]
pub struct LrSchedule {
    peak: f64,
    min: f64,
    kind: Schedule,
    /// Warmup length and the whole run, in the schedule's unit.
    warmup: f64,
    total: f64,
    /// How far one step moves in the schedule's unit (1 or tokens per step).
    per_step: f64,
}

impl LrSchedule {
    pub fn new(config: &RunConfig) -> Self {
        let per_step = match config.warmup_unit {
            WarmupUnit::Steps => 1.0,
            WarmupUnit::Tokens => config.tokens_per_step() as f64,
        };
        Self {
            peak: config.lr,
            min: config.lr * config.min_lr_ratio,
            kind: config.schedule,
            warmup: config.warmup as f64,
            total: config.steps as f64 * per_step,
            per_step,
        }
    }

    /// The learning rate of 0-based optimiser step `step`.
    pub fn lr(&self, step: u64) -> f64 {
        let start = step as f64 * self.per_step;
        let end = start + self.per_step;
        if end <= self.warmup {
            return self.peak * end / self.warmup;
        }
        let decay_start = self.warmup.max(start);
        let progress =
            ((decay_start - self.warmup) / (self.total - self.warmup).max(self.per_step)).clamp(0.0, 1.0);
        match self.kind {
            Schedule::Constant => self.peak,
            // Loshchilov & Hutter, SGDR (2017), eq. 5, without restarts.
            Schedule::Cosine => {
                self.min + 0.5 * (self.peak - self.min) * (1.0 + (std::f64::consts::PI * progress).cos())
            }
            Schedule::Linear => self.peak - (self.peak - self.min) * progress,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(schedule: Schedule, unit: WarmupUnit, warmup: u64) -> RunConfig {
        RunConfig {
            steps: 100,
            lr: 1.0,
            min_lr_ratio: 0.1,
            schedule,
            warmup_unit: unit,
            warmup,
            ..RunConfig::default()
        }
    }

    #[test]
    fn warmup_ramps_linearly_to_the_peak() {
        let s = LrSchedule::new(&config(Schedule::Constant, WarmupUnit::Steps, 10));
        assert!((s.lr(0) - 0.1).abs() < 1e-12);
        assert!((s.lr(4) - 0.5).abs() < 1e-12);
        assert!((s.lr(9) - 1.0).abs() < 1e-12);
        assert_eq!(s.lr(50), 1.0);
    }

    #[test]
    fn cosine_and_linear_decay_end_at_the_minimum() {
        for kind in [Schedule::Cosine, Schedule::Linear] {
            let s = LrSchedule::new(&config(kind, WarmupUnit::Steps, 10));
            assert!((s.lr(10) - 1.0).abs() < 1e-12, "{kind}");
            assert!(s.lr(55) < s.lr(30), "{kind}");
            assert!((s.lr(99) - 0.1).abs() < 0.01, "{kind}: {}", s.lr(99));
        }
    }

    #[test]
    fn warmup_can_be_counted_in_tokens() {
        let mut c = config(Schedule::Constant, WarmupUnit::Tokens, 0);
        c.warmup = c.tokens_per_step() * 4; // four steps' worth of tokens
        let s = LrSchedule::new(&c);
        assert!((s.lr(0) - 0.25).abs() < 1e-12);
        assert!((s.lr(3) - 1.0).abs() < 1e-12);
        let no_warmup = LrSchedule::new(&config(Schedule::Cosine, WarmupUnit::Steps, 0));
        assert_eq!(no_warmup.lr(0), 1.0);
    }
}
