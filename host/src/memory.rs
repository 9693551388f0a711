//! Allocator settings for training processes.

/// Keeps freed tensor buffers in the heap for reuse. glibc's malloc serves large blocks with
/// mmap and unmaps them on free, so every fresh activation or gradient buffer of a step
/// page-faults again; with the thresholds raised, `lmhost bench` spent 1.4 s instead of 3.9 s of
/// system time over the same 11 steps. Affects the whole process, plugins included (a `cdylib`
/// allocates through the same malloc).
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const M_TRIM_THRESHOLD: i32 = -1;
        const M_TOP_PAD: i32 = -2;
        const M_MMAP_THRESHOLD: i32 = -3;
        extern "C" {
            fn mallopt(param: i32, value: i32) -> i32;
        }
        // Safety: mallopt only changes malloc's tuning parameters; any value is valid to pass.
        unsafe {
            mallopt(M_MMAP_THRESHOLD, 32 << 20); // glibc's largest allowed threshold
            mallopt(M_TRIM_THRESHOLD, i32::MAX);
            mallopt(M_TOP_PAD, 64 << 20);
        }
    }
}
