//! The process's allocator: mimalloc for small blocks, the system's
//! (glibc's) for large ones.
//!
//! A miss makes hundreds of small allocations for its three upstream calls;
//! mimalloc's per-thread free lists make those cheaper than glibc's (about
//! 12% more misses a second on this machine). A `b64_json` answer is a few
//! megabytes read into one buffer; glibc serves a block that size from
//! memory it has just freed, where mimalloc returned it to the system and
//! faults fresh pages in, so `b64_json` misses ran 12-15% slower on
//! mimalloc alone. Each block goes to one of the two by its size, which
//! Rust passes to every call that frees or resizes it, so a block is
//! always given back to the allocator that made it.

use std::alloc::{GlobalAlloc, Layout, System};

use mimalloc::MiMalloc;

/// Turn transparent huge pages off for this process, first thing in
/// `main`. mimalloc reserves its memory in large aligned regions; where the
/// kernel backs those with 2 MiB pages (THP `always`, or `madvise`, which
/// mimalloc asks for), each thread's first few small blocks made a 2 MiB
/// page resident: idle RSS went from 14 to 28 MiB and a miss load's peak
/// from ~70 to ~100 MiB on this machine, for no gain in speed (A/B: the
/// same misses and `b64_json` misses a second with THP off).
pub fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl with PR_SET_THP_DISABLE takes four integer arguments
    // and touches no memory of ours; a kernel without it returns EINVAL,
    // which changes nothing.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// How often [`give_back_above`] looks at the resident size while work
/// is in flight, and while there is none.
const GIVE_BACK_BUSY: std::time::Duration = std::time::Duration::from_millis(10);
const GIVE_BACK_IDLE: std::time::Duration = std::time::Duration::from_millis(250);
/// The longest pause after trims that left RSS above the bound.
const GIVE_BACK_MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// While the process's resident size is above `bound()` bytes, give the
/// memory glibc keeps of freed large blocks back to the system, until
/// `stop`; it looks every 10 ms while `busy()` (in the gateway: more than
/// a quarter of the memory budget is held), every 250 ms otherwise.
/// glibc serves a large block from memory it freed before (which keeps
/// `b64_json` misses fast: returning it and faulting fresh pages in halved
/// their rate in an A/B) but returns only the top of each heap on its own.
/// Under a hostile `b64_json` load the freed holes between live answers
/// held RSS near twice the memory budget, and kept it there after the
/// load. `malloc_trim` returns those holes (RSS comes back down as the
/// load eases; peaks between trims still pass the bound); under the bound
/// nothing changes. When a trim leaves RSS above the bound (what is held is
/// live, not freed), the next look waits twice as long, up to a second, so
/// a process whose memory in use sits above the bound does not trim in a
/// loop. Counted in `trims`.
pub async fn give_back_above(
    bound: impl Fn() -> u64,
    busy: impl Fn() -> bool,
    trims: prometheus::IntCounter,
    stop: tokio_util::sync::CancellationToken,
) {
    let over = || resident_bytes().is_some_and(|rss| rss > bound());
    // Doubled after each trim that left RSS above the bound.
    let mut pause = std::time::Duration::ZERO;
    loop {
        let every = if busy() {
            GIVE_BACK_BUSY
        } else {
            GIVE_BACK_IDLE
        };
        tokio::select! {
            () = tokio::time::sleep(every.max(pause)) => {}
            () = stop.cancelled() => return,
        }
        if !over() {
            pause = std::time::Duration::ZERO;
            continue;
        }
        // It takes milliseconds on a large heap: not on a runtime thread.
        if tokio::task::spawn_blocking(give_back).await.is_ok() {
            trims.inc();
        }
        pause = if over() {
            (pause * 2).clamp(GIVE_BACK_BUSY * 2, GIVE_BACK_MAX_PAUSE)
        } else {
            std::time::Duration::ZERO
        };
    }
}

/// The process's resident set, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

/// Return the free memory of every glibc heap to the system.
fn give_back() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes a size and only releases free memory; it
    // locks each heap while it walks it.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Blocks of at least this many bytes come from the system's allocator.
pub const LARGE: usize = 256 * 1024;

/// mimalloc below [`LARGE`], the system's allocator from it.
pub struct Split;

fn large(size: usize) -> bool {
    size >= LARGE
}

// SAFETY: every call is forwarded to the allocator that owns the block,
// chosen by the block's size, which the caller must pass unchanged to
// `dealloc` and `realloc` (GlobalAlloc's contract); a block that crosses
// the threshold in `realloc` is moved with `alloc` + copy + `dealloc`.
unsafe impl GlobalAlloc for Split {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, forwarded.
        unsafe {
            if large(layout.size()) {
                System.alloc(layout)
            } else {
                MiMalloc.alloc(layout)
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's layout, forwarded.
        unsafe {
            if large(layout.size()) {
                System.alloc_zeroed(layout)
            } else {
                MiMalloc.alloc_zeroed(layout)
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated with `layout`, so by the allocator
        // its size picks.
        unsafe {
            if large(layout.size()) {
                System.dealloc(ptr, layout)
            } else {
                MiMalloc.dealloc(ptr, layout)
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` and `layout` as in `dealloc`; `new_size` is
        // non-zero and does not overflow when rounded to the alignment
        // (the caller's promise), so the new layout is valid.
        unsafe {
            match (large(layout.size()), large(new_size)) {
                (true, true) => System.realloc(ptr, layout, new_size),
                (false, false) => MiMalloc.realloc(ptr, layout, new_size),
                _ => {
                    let new_layout = Layout::from_size_align_unchecked(new_size, layout.align());
                    let moved = self.alloc(new_layout);
                    if !moved.is_null() {
                        std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                    moved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Freed memory is given back only while the resident size is above
    /// the bound, less often while trims leave it there, and the loop ends
    /// when told to stop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn freed_memory_is_given_back_only_above_the_bound() {
        assert!(resident_bytes().is_some_and(|rss| rss > 1 << 20));
        let run = |bound: u64| {
            let trims = prometheus::IntCounter::new("trims", "trims").unwrap();
            let stop = tokio_util::sync::CancellationToken::new();
            let task = tokio::spawn(give_back_above(
                move || bound,
                || true,
                trims.clone(),
                stop.clone(),
            ));
            (trims, stop, task)
        };
        let (under, stop_under, task_under) = run(u64::MAX);
        let (over, stop_over, task_over) = run(0);
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while over.get() < 3 {
                tokio::time::sleep(GIVE_BACK_BUSY).await;
            }
        })
        .await
        .expect("above the bound, memory is given back every few ms");
        assert_eq!(under.get(), 0, "under the bound, never");
        // RSS never gets under a bound of 0: each trim that leaves it
        // above doubles the pause (20, 40, 80... ms), where every 10 ms
        // would make about 60 trims in these 600 ms.
        tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        assert!(over.get() <= 15, "{} trims: no backing off", over.get());
        stop_under.cancel();
        stop_over.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            task_under.await.unwrap();
            task_over.await.unwrap();
        })
        .await
        .expect("both loops stop when told");
    }

    /// Blocks made, grown across the threshold both ways and freed keep
    /// their bytes, whichever allocator holds them.
    #[test]
    fn blocks_keep_their_bytes_across_the_threshold() {
        for align in [1, 8, 64, 4096] {
            let small = Layout::from_size_align(1000, align).unwrap();
            // SAFETY: layouts are non-zero; each block is freed once, with
            // the layout it has at that moment.
            unsafe {
                let p = Split.alloc(small);
                assert!(!p.is_null());
                for i in 0..1000 {
                    *p.add(i) = (i % 251) as u8;
                }
                let p = Split.realloc(p, small, LARGE * 2);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                for i in 0..1000 {
                    assert_eq!(*p.add(i), (i % 251) as u8);
                }
                let big = Layout::from_size_align(LARGE * 2, align).unwrap();
                let p = Split.realloc(p, big, 500);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                for i in 0..500 {
                    assert_eq!(*p.add(i), (i % 251) as u8);
                }
                Split.dealloc(p, Layout::from_size_align(500, align).unwrap());

                let z = Split.alloc_zeroed(big);
                assert!(!z.is_null());
                assert!((0..LARGE * 2).all(|i| *z.add(i) == 0));
                Split.dealloc(z, big);
            }
        }
    }
}
