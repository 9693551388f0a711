//! What the orchestrator prints: the numbers derived from a run's config before it trains, and
//! the arms' table after.

use datasets::PreparedData;

use crate::config::RunConfig;
use crate::events::{duration, human};
use crate::run_store::{Derived, Status};
use crate::worker::ArmRun;

/// The numbers derived once from the config, printed before anything trains.
pub fn print_plan(c: &RunConfig, data: &PreparedData, derived: &Derived) {
    println!(
        "data:{} vocab:{} train_tokens:{} val_tokens:{} (held-out documents: {})",
        c.dataset,
        derived.vocab_size,
        human(data.manifest.train_tokens as f64),
        human(data.manifest.val_tokens as f64),
        data.manifest.val_document_count
    );
    println!(
        "tokens per step will be {} = {} sequences × {} tokens ({} micro-batches of {}); {} steps = {} tokens per arm",
        derived.tokens_per_step,
        c.batch_size,
        c.context_length,
        derived.accumulation,
        c.micro_batch_size,
        c.steps,
        human(derived.total_tokens as f64)
    );
}

/// The arms' table; with two arms, their difference (`one_seed`: say it is one seed's).
pub fn print_summary(arms: &[ArmRun], one_seed: bool) {
    println!();
    println!(
        "{:<14} {:<10} {:>9} {:>8} {:>15} {:>7} {:>7}  run",
        "arm", "status", "val loss", "val acc", "params tr/prod", "tok/s", "wall"
    );
    for a in arms {
        let r = a.record.result.clone().unwrap_or_default();
        let opt = |v: Option<f64>, p: usize| v.map(|v| format!("{v:.p$}")).unwrap_or_else(|| "-".into());
        println!(
            "{:<14} {:<10} {:>9} {:>8} {:>15} {:>7} {:>7}  {}",
            a.label,
            a.record.status.as_str(),
            opt(r.val_loss, 4),
            opt(r.val_accuracy, 4),
            format!("{}/{}", human(r.params_train as f64), human(r.params_prod as f64)),
            human(r.tokens_per_s),
            duration(r.wall_s),
            a.dir.display()
        );
    }
    if let [b, e] = arms {
        if let (Some(bl), Some(el)) = (
            b.record.result.as_ref().and_then(|r| r.val_loss),
            e.record.result.as_ref().and_then(|r| r.val_loss),
        ) {
            if b.record.status == Status::Finished && e.record.status == Status::Finished {
                let caution = if one_seed { " (one seed; use several seeds before trusting it)" } else { "" };
                println!("val loss difference ({} − baseline): {:+.4} nats/token{caution}", e.label, el - bl);
            }
        }
    }
    for a in arms {
        if let Some(err) = &a.record.error {
            eprintln!("error: {} arm ({}): {err}", a.label, a.record.status.as_str());
        }
    }
}
