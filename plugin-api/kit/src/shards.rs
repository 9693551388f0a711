//! Data-parallel shards of a batch on the CPU.
//!
//! A micro-batch on the CPU is split by rows into [`SHARDS`] shards, each run (forward and
//! backward) on its own thread pool at the same time, and the gradients are summed. On a
//! 2-core machine each shard has one core to itself: no op waits for another thread, the matrix
//! products are single-threaded, and the element-wise work and the fused kernels, which run on
//! one core when a step is split by op, now use both. The shard count is fixed, not taken from
//! the machine, so a run's numbers do not depend on how many cores it had (the split changes
//! the order gradients are summed in, so it is part of what a run is); the cores are divided
//! between the shards' pools.
//!
//! `LMHOST_SHARDS=1` turns the split off (and `=N` uses N shards), to compare;
//! `LMHOST_PLAIN_KERNELS=1`, the whole unoptimised path, turns it off too.

use std::ops::Range;
use std::sync::OnceLock;

use candle_core::Device;

/// Shards per CPU micro-batch.
pub const SHARDS: usize = 2;

/// The variable that sets the shard count.
pub const SHARDS_ENV: &str = "LMHOST_SHARDS";

/// Deep autograd graphs recurse in candle's backward; the main thread's 8 MiB, not a worker's 2.
const STACK_BYTES: usize = 16 << 20;

/// How many shards a CPU micro-batch is split into here: [`SHARDS`], `LMHOST_SHARDS` when set,
/// 1 with `LMHOST_PLAIN_KERNELS`.
pub fn count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        if crate::kernels::plain_kernels() {
            return 1;
        }
        std::env::var(SHARDS_ENV).ok().and_then(|s| s.parse().ok()).filter(|&n| n > 0).unwrap_or(SHARDS)
    })
}

/// The rows of each shard of a (rows, …) batch: one range, all rows, off the CPU or when the
/// batch has fewer rows than shards.
pub fn row_ranges(rows: usize, device: &Device) -> Vec<Range<usize>> {
    let shards = count();
    if !device.is_cpu() || shards == 1 || rows < shards {
        return std::iter::once(0..rows).collect();
    }
    (0..shards).map(|i| i * rows / shards..(i + 1) * rows / shards).collect()
}

/// For items of the given sizes, the shard that takes each: the largest first, each to the
/// least loaded shard (deterministic, and within the largest item of even).
pub fn balance(sizes: impl IntoIterator<Item = usize>, shards: usize) -> Vec<usize> {
    let sizes: Vec<usize> = sizes.into_iter().collect();
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
    let (mut load, mut owner) = (vec![0usize; shards.max(1)], vec![0; sizes.len()]);
    for i in order {
        let least = (0..load.len()).min_by_key(|&s| (load[s], s)).unwrap_or(0);
        owner[i] = least;
        load[least] += sizes[i];
    }
    owner
}

/// One pool per shard, the machine's threads divided between them.
fn pools() -> &'static [rayon::ThreadPool] {
    static POOLS: OnceLock<Vec<rayon::ThreadPool>> = OnceLock::new();
    POOLS.get_or_init(|| {
        let (shards, threads) = (count(), candle_core::utils::get_num_threads());
        (0..shards)
            .map(|i| {
                // Pools of one thread make candle run every op inline (the vendored patch).
                let share = (threads * (i + 1) / shards).saturating_sub(threads * i / shards).max(1);
                rayon::ThreadPoolBuilder::new()
                    .num_threads(share)
                    .stack_size(STACK_BYTES)
                    .thread_name(move |t| format!("lmhost-shard-{i}.{t}"))
                    .build()
                    .expect("cannot start the shard thread pools")
            })
            .collect()
    })
}

/// `work(i)` for every shard `i < n`, all at once, each on its shard's pool; the results in
/// shard order. A panic in any shard is re-raised here.
pub fn run<R: Send>(n: usize, work: impl Fn(usize) -> R + Sync) -> Vec<R> {
    let pools = pools();
    assert!(n <= pools.len(), "{n} shards but {} shard pools", pools.len());
    let work = &work;
    std::thread::scope(|scope| {
        let others: Vec<_> = (1..n).map(|i| scope.spawn(move || pools[i].install(|| work(i)))).collect();
        let first = pools[0].install(|| work(0));
        let mut results = vec![first];
        for other in others {
            results.push(other.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        results
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_rows_in_order() {
        let cpu = Device::Cpu;
        assert_eq!(row_ranges(1, &cpu), vec![0..1]);
        let ranges = row_ranges(9, &cpu);
        assert_eq!(ranges.len(), count());
        assert_eq!(ranges.first().map(|r| r.start), Some(0));
        assert_eq!(ranges.last().map(|r| r.end), Some(9));
        assert!(ranges.windows(2).all(|w| w[0].end == w[1].start && !w[0].is_empty()));
    }

    #[test]
    fn balance_splits_the_work_evenly() {
        let owners = balance([100, 10, 60, 40, 5, 5], 2);
        let load = |s| {
            owners
                .iter()
                .zip([100, 10, 60, 40, 5, 5])
                .filter(|&(&o, _)| o == s)
                .map(|(_, n)| n)
                .sum::<usize>()
        };
        assert_eq!((load(0), load(1)), (110, 110));
        assert_eq!(balance([7], 3), vec![0]);
    }

    #[test]
    fn shards_run_at_once_on_their_own_pools_and_panics_reach_the_caller() {
        let n = count();
        let results = run(n, |i| {
            let name = std::thread::current().name().map(String::from);
            (i, rayon::current_num_threads(), candle_core::utils::get_num_threads(), name)
        });
        for (i, (shard, pool_threads, candle_threads, name)) in results.into_iter().enumerate() {
            assert_eq!(shard, i);
            assert!(name.is_some_and(|n| n.starts_with(&format!("lmhost-shard-{i}."))));
            // The vendored candle's patch: a one-thread pool runs candle's ops inline.
            if pool_threads == 1 {
                assert_eq!(candle_threads, 1);
            }
        }
        // Every shard waits for all the others: this returns only if they run at the same time.
        let barrier = std::sync::Barrier::new(n);
        run(n, |_| barrier.wait());
        let panicked = std::panic::catch_unwind(|| run(n, |i| assert!(i + 1 < n, "shard {i} fails")));
        assert!(panicked.is_err());
    }
}
