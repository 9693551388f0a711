//! What a worker tells the orchestrator, one JSON object per line on its stdout, and how the
//! orchestrator shows it: greppable `key:value` lines when the output is not a terminal, a
//! progress bar over the same events when it is.

use std::io::{IsTerminal, Write};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::run_store::{RunResult, Status};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    Started {
        params_train: u64,
        params_prod: u64,
        steps: u64,
        tokens_per_step: u64,
    },
    Progress {
        step: u64,
        steps: u64,
        loss: f64,
        val_loss: Option<f64>,
        lr: f64,
        tokens_per_s: f64,
        eta_s: f64,
        /// The plan stage of this step.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stage: Option<String>,
    },
    Finished {
        result: RunResult,
    },
    Stopped {
        status: Status,
        message: String,
    },
}

/// Sends an event to the orchestrator.
pub fn emit(event: &Event) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", serde_json::to_string(event).expect("event serialises"));
    let _ = out.flush();
}

/// The orchestrator's view of one arm's events.
pub struct ArmView {
    arm: String,
    /// Whether to draw a bar (stderr is a terminal); the bar itself starts with the run.
    interactive: bool,
    bar: Option<ProgressBar>,
}

impl ArmView {
    pub fn new(arm: &str) -> Self {
        Self { arm: arm.to_owned(), interactive: std::io::stderr().is_terminal(), bar: None }
    }

    fn start_bar(&mut self, steps: u64) {
        let bar = ProgressBar::new(steps);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        bar.set_prefix(self.arm.clone());
        bar.enable_steady_tick(Duration::from_millis(250));
        self.bar = Some(bar);
    }

    pub fn show(&mut self, event: &Event) {
        match event {
            Event::Started { params_train, params_prod, steps, tokens_per_step } => {
                self.line(&format!(
                    "arm:{} params:{}/{} steps:{steps} tokens_per_step:{tokens_per_step}",
                    self.arm,
                    human(*params_train as f64),
                    human(*params_prod as f64)
                ));
                if self.interactive {
                    self.start_bar(*steps);
                }
            }
            Event::Progress { step, steps, loss, val_loss, lr, tokens_per_s, eta_s, stage } => {
                let val = val_loss.map(|v| format!(" val:{v:.3}")).unwrap_or_default();
                let stage = stage.as_ref().map(|s| format!("stage:{s} ")).unwrap_or_default();
                let fields = format!(
                    "{stage}loss:{loss:.3}{val} lr:{lr:.1e} tok/s:{} eta:{}",
                    human(*tokens_per_s),
                    duration(*eta_s)
                );
                match &self.bar {
                    Some(bar) => {
                        bar.set_position(*step);
                        bar.set_message(fields);
                    }
                    None => self.line(&format!("arm:{} step:{step}/{steps} {fields}", self.arm)),
                }
            }
            Event::Finished { result } => {
                if let Some(bar) = &self.bar {
                    bar.finish_and_clear();
                }
                let val = result.val_loss.map(|v| format!(" val:{v:.3}")).unwrap_or_default();
                self.line(&format!(
                    "arm:{} status:finished step:{}{val} tok/s:{} wall:{}",
                    self.arm,
                    result.steps,
                    human(result.tokens_per_s),
                    duration(result.wall_s)
                ));
            }
            Event::Stopped { status, message } => {
                if let Some(bar) = &self.bar {
                    bar.abandon();
                }
                self.line(&format!("arm:{} status:{} {message}", self.arm, status.as_str()));
            }
        }
    }

    fn line(&self, text: &str) {
        match &self.bar {
            Some(bar) => bar.println(text),
            None => println!("{text}"),
        }
    }
}

/// Prepares a dataset, showing how far tokenising has come: a byte bar on a terminal, a plain
/// `data:` line every ~10% otherwise (nothing when the cache already exists).
pub fn prepare_data(
    settings: &datasets::DataSettings,
    cache_root: &std::path::Path,
) -> Result<datasets::PreparedData, datasets::DataError> {
    let interactive = std::io::stderr().is_terminal();
    let bar = std::sync::Mutex::new(None::<ProgressBar>);
    let last_tenth = std::sync::atomic::AtomicU64::new(0);
    let progress = |what: &str, done: u64, total: u64| {
        if interactive {
            let mut bar = bar.lock().expect("lock");
            let bar = bar.get_or_insert_with(|| {
                let b = ProgressBar::new(total);
                b.set_style(
                    ProgressStyle::with_template(
                        "{prefix:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                b.set_prefix(what.to_owned());
                b
            });
            bar.set_position(done);
        } else {
            let tenth = (done * 10).checked_div(total).unwrap_or(10);
            if tenth > last_tenth.swap(tenth, std::sync::atomic::Ordering::Relaxed) {
                println!("data:{what} {}B/{}B", human(done as f64), human(total as f64));
            }
        }
    };
    let prepared = datasets::PreparedData::prepare_with(settings, cache_root, &progress);
    if let Some(bar) = bar.into_inner().expect("lock") {
        bar.finish_and_clear();
    }
    prepared
}

/// 2100 → `2.1k`, 7.9e6 → `7.9M`.
pub fn human(x: f64) -> String {
    let a = x.abs();
    if a >= 1e9 {
        format!("{:.1}G", x / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", x / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// 100 → `1m40s`.
pub fn duration(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_short() {
        assert_eq!(human(2100.0), "2.1k");
        assert_eq!(human(7_900_000.0), "7.9M");
        assert_eq!(human(12.0), "12");
        assert_eq!(duration(100.0), "1m40s");
        assert_eq!(duration(7.0), "7s");
        assert_eq!(duration(3_700.0), "1h01m");
        assert_eq!(format!("{:.1e}", 6e-4), "6.0e-4");
    }

    #[test]
    fn events_round_trip_as_json_lines() {
        let e = Event::Progress {
            step: 1,
            steps: 2,
            loss: 3.0,
            val_loss: None,
            lr: 1e-3,
            tokens_per_s: 10.0,
            eta_s: 1.0,
            stage: None,
        };
        let line = serde_json::to_string(&e).unwrap();
        assert!(line.starts_with(r#"{"event":"progress""#));
        assert_eq!(serde_json::from_str::<Event>(&line).unwrap(), e);
    }
}
