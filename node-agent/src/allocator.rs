//! Keeps the daemon's memory from growing with the piece length.
//!
//! Piece-sized buffers (1-64 MiB) are allocated and freed all the time. With
//! glibc's default, the first free of such a buffer raises the mmap threshold
//! to its size, and from then on they come from per-thread arenas that keep
//! the memory after it is freed: peak RSS grows with the piece length times
//! the threads that ever held one (measured with `dragonfly-bench memory`,
//! 1 GiB to 8 readers: 158-202 MiB; with a fixed threshold 57-63 MiB). A
//! fixed threshold keeps large buffers in their own mappings, returned to the
//! system as soon as they are freed; smaller ones (the readers' 256 KiB
//! chunks) still come from the arenas.

/// Allocations of at least this many bytes get their own mapping.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 512 * 1024;

/// Fixes glibc's mmap threshold (elsewhere: nothing to do). Call once at
/// start; returns whether the setting took.
pub fn return_large_buffers_to_the_system() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only sets a malloc tunable; M_MMAP_THRESHOLD with
        // a value below the 32 MiB maximum is valid at any time.
        unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn the_threshold_is_accepted() {
        assert!(super::return_large_buffers_to_the_system());
    }
}
