//! What a training step issues, counted by the kit's candle (its own process: the counters are
//! global, so no other test may run beside these). A step that is not logged reads nothing back
//! to the host, and the optimiser issues as many ops for a large model as for a small one.

use lmhost_kit::candle::lmhost::counters;
use lmhost_kit::precision::Precision;
use lmhost_kit::trainer::{RunSpec, Trainer};
use lmhost_kit::Baseline;

const VOCAB: usize = 64;
const CONTEXT: usize = 16;

fn trainer(layers: usize, precision: Precision, optimizer: &str) -> Trainer<Baseline> {
    let config = format!(
        r#"{{"n_layer": {layers}, "n_embd": 32, "n_head": 2, "metrics_every": 0, "optimizer": "{optimizer}"}}"#
    );
    let spec = RunSpec { precision, ..RunSpec::cpu(1, VOCAB, CONTEXT) };
    Trainer::<Baseline>::new(&spec, &config).unwrap()
}

fn batch(salt: u32) -> Vec<u32> {
    (0..(4 * (CONTEXT + 1)) as u32).map(|i| (i * 7 + salt) % VOCAB as u32).collect()
}

/// Two micro-batches and an update; the ops and reads of the update alone.
fn step(t: &mut Trainer<Baseline>, salt: u32) -> (u64, u64) {
    for micro in 0..2 {
        t.accumulate(&batch(salt + micro), 4, CONTEXT + 1, 1.0 / (8 * CONTEXT) as f64).unwrap();
    }
    let (ops, reads) = (counters::ops(), counters::host_reads());
    t.apply_step(1e-3).unwrap();
    (counters::ops() - ops, counters::host_reads() - reads)
}

#[test]
fn a_step_reads_nothing_back_and_its_update_issues_ops_independent_of_the_model_size() {
    for precision in [Precision::F32, Precision::Bf16Mixed] {
        for optimizer in ["adamw", "sgd", "adagrad"] {
            let mut ops = Vec::new();
            for layers in [1, 3] {
                let mut t = trainer(layers, precision, optimizer);
                step(&mut t, 0); // the first update builds its tables once
                let reads = counters::host_reads();
                let (update_ops, update_reads) = step(&mut t, 5);
                assert_eq!(update_reads, 0, "{precision} {optimizer}: the update reads nothing back");
                assert_eq!(
                    counters::host_reads(),
                    reads,
                    "{precision} {optimizer}: a non-logging step reads nothing back"
                );
                ops.push(update_ops);
                let stats = t.take_step_stats().unwrap();
                assert_eq!(stats.len(), 2);
                assert!(stats.iter().all(|s| s.batch.loss_sum.is_finite()
                    && s.grad_norm > 0.0
                    && s.batch.tokens == 8 * CONTEXT as u64));
                assert_eq!(
                    counters::host_reads() - reads,
                    3,
                    "{precision} {optimizer}: two steps read back in three transfers"
                );
            }
            assert_eq!(ops[0], ops[1], "{precision} {optimizer}: update ops of 1 and 3 layers");
        }
    }
}
