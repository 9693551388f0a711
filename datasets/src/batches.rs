//! Deterministic batches. A training window's position is a pure function of (seed, step,
//! micro-batch, row), so two arms with the same seed see the same tokens in the same order, and
//! a resumed run needs no generator state to continue where it stopped.

use crate::tokens::Tokens;

/// `rows` windows of `context + 1` ids each, row-major, for micro-batch `micro` of optimiser
/// step `step` (0-based), drawn uniformly from `tokens`.
pub fn train_batch(
    tokens: &Tokens,
    seed: u64,
    step: u64,
    micro: u64,
    rows: usize,
    context: usize,
) -> Vec<u32> {
    mixed_batch(&[(tokens, 1.0)], seed, step, micro, rows, context)
}

/// As [`train_batch`], each row drawn from one of several streams with probability
/// proportional to its weight (a plan stage's data mixture). With one stream it is
/// [`train_batch`] exactly.
pub fn mixed_batch(
    sources: &[(&Tokens, f64)],
    seed: u64,
    step: u64,
    micro: u64,
    rows: usize,
    context: usize,
) -> Vec<u32> {
    let span = context + 1;
    for (tokens, _) in sources {
        assert!(tokens.len() > span, "a training stream is shorter than one window");
    }
    let total: f64 = sources.iter().map(|s| s.1).sum();
    let mut out = Vec::with_capacity(rows * span);
    for row in 0..rows as u64 {
        let tokens = if sources.len() == 1 {
            sources[0].0
        } else {
            // A uniform draw in [0, total) from the same counter-based generator.
            let u = (mix(&[seed, step, micro, row, MIXTURE]) >> 11) as f64 / (1u64 << 53) as f64 * total;
            let mut acc = 0.0;
            sources
                .iter()
                .find(|(_, w)| {
                    acc += w;
                    u < acc
                })
                .unwrap_or(&sources[sources.len() - 1])
                .0
        };
        let starts = (tokens.len() - span + 1) as u64;
        let start = (mix(&[seed, step, micro, row]) % starts) as usize;
        out.extend(tokens.window(start, span));
    }
    out
}

/// Separates the mixture's draws from the window starts.
const MIXTURE: u64 = 0x6d69_7874;

/// The fixed validation set: `windows` windows of `context + 1` ids, spread evenly over
/// `tokens`, independent of any seed so every run is measured on the same tokens.
pub fn validation_windows(tokens: &Tokens, windows: usize, context: usize) -> Vec<u32> {
    let span = context + 1;
    assert!(tokens.len() > span, "the validation split is shorter than one window");
    let last_start = tokens.len() - span;
    let mut out = Vec::with_capacity(windows * span);
    for w in 0..windows {
        let start = if windows > 1 { w * last_start / (windows - 1) } else { 0 };
        out.extend(tokens.window(start, span));
    }
    out
}

/// A 64-bit hash of a few words (SplitMix64's finaliser over a running sum): a counter-based
/// generator whose output depends only on its inputs.
fn mix(words: &[u64]) -> u64 {
    let mut h = 0x243f_6a88_85a3_08d3u64;
    for &w in words {
        h = h.wrapping_add(w).wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^= h >> 31;
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_reproducible_and_vary_with_every_input() {
        let tokens = Tokens::from((0..10_000).collect::<Vec<u32>>());
        let a = train_batch(&tokens, 1, 5, 0, 4, 16);
        assert_eq!(a.len(), 4 * 17);
        assert_eq!(a, train_batch(&tokens, 1, 5, 0, 4, 16));
        assert_ne!(a, train_batch(&tokens, 2, 5, 0, 4, 16));
        assert_ne!(a, train_batch(&tokens, 1, 6, 0, 4, 16));
        assert_ne!(a, train_batch(&tokens, 1, 5, 1, 4, 16));
        // Each row is a contiguous window.
        for row in a.chunks(17) {
            assert!(row.windows(2).all(|w| w[1] == w[0] + 1));
        }
    }

    #[test]
    fn windows_cover_the_whole_stream_including_its_end() {
        let tokens = Tokens::from((0..1000).collect::<Vec<u32>>());
        let v = validation_windows(&tokens, 5, 9);
        assert_eq!(v.len(), 50);
        assert_eq!(v[0], 0);
        assert_eq!(*v.last().unwrap(), 999);
    }

    #[test]
    fn starts_are_spread_over_the_stream() {
        let tokens = Tokens::from((0..1000).collect::<Vec<u32>>());
        let firsts: Vec<u32> = (0..200).map(|s| train_batch(&tokens, 0, s, 0, 1, 9)[0]).collect();
        assert!(firsts.iter().any(|&f| f < 100) && firsts.iter().any(|&f| f > 890));
    }

    #[test]
    fn a_mixture_draws_rows_by_weight_and_one_stream_is_a_plain_batch() {
        let a = Tokens::from((0..1000).collect::<Vec<u32>>());
        let b = Tokens::from((5000..6000).collect::<Vec<u32>>());
        assert_eq!(mixed_batch(&[(&a, 3.0)], 1, 2, 0, 4, 9), train_batch(&a, 1, 2, 0, 4, 9));
        let from_b = (0..400)
            .map(|step| mixed_batch(&[(&a, 3.0), (&b, 1.0)], 1, step, 0, 1, 9)[0])
            .filter(|&t| t >= 5000)
            .count();
        assert!((70..130).contains(&from_b), "{from_b} of 400 rows from the weight-1/4 stream");
        assert_eq!(
            mixed_batch(&[(&a, 3.0), (&b, 1.0)], 1, 7, 0, 4, 9),
            mixed_batch(&[(&a, 3.0), (&b, 1.0)], 1, 7, 0, 4, 9)
        );
    }
}
