//! Deterministic batches. A training window's position is a pure function of (seed, step,
//! micro-batch, row), so two arms with the same seed see the same tokens in the same order, and
//! a resumed run needs no generator state to continue where it stopped.

/// `rows` windows of `context + 1` ids each, row-major, for micro-batch `micro` of optimiser
/// step `step` (0-based), drawn uniformly from `tokens`.
pub fn train_batch(
    tokens: &[u32],
    seed: u64,
    step: u64,
    micro: u64,
    rows: usize,
    context: usize,
) -> Vec<u32> {
    let span = context + 1;
    assert!(tokens.len() > span, "the training split is shorter than one window");
    let starts = (tokens.len() - span + 1) as u64;
    let mut out = Vec::with_capacity(rows * span);
    for row in 0..rows as u64 {
        let start = (mix(&[seed, step, micro, row]) % starts) as usize;
        out.extend_from_slice(&tokens[start..start + span]);
    }
    out
}

/// The fixed validation set: `windows` windows of `context + 1` ids, spread evenly over
/// `tokens`, independent of any seed so every run is measured on the same tokens.
pub fn validation_windows(tokens: &[u32], windows: usize, context: usize) -> Vec<u32> {
    let span = context + 1;
    assert!(tokens.len() > span, "the validation split is shorter than one window");
    let last_start = tokens.len() - span;
    let mut out = Vec::with_capacity(windows * span);
    for w in 0..windows {
        let start = if windows > 1 { w * last_start / (windows - 1) } else { 0 };
        out.extend_from_slice(&tokens[start..start + span]);
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
        let tokens: Vec<u32> = (0..10_000).collect();
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
        let tokens: Vec<u32> = (0..1000).collect();
        let v = validation_windows(&tokens, 5, 9);
        assert_eq!(v.len(), 50);
        assert_eq!(v[0], 0);
        assert_eq!(*v.last().unwrap(), 999);
    }

    #[test]
    fn starts_are_spread_over_the_stream() {
        let tokens: Vec<u32> = (0..1000).collect();
        let firsts: Vec<u32> = (0..200).map(|s| train_batch(&tokens, 0, s, 0, 1, 9)[0]).collect();
        assert!(firsts.iter().any(|&f| f < 100) && firsts.iter().any(|&f| f > 890));
    }
}
