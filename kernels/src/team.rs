//! A team of worker threads that spin between jobs, for decode's matrix-vector products.
//!
//! Decode makes hundreds of parallel calls per token, each a millisecond or less. Through rayon,
//! a worker that found no work for a few dozen rounds goes to sleep on a futex, and the next
//! call has to wake it. On the 2-vCPU VM this project is measured on, a wake-up takes 27–51 µs
//! to reach the sleeper and costs the waker 14–19 µs inside the system call, against about
//! 1 µs for a thread still spinning (`cargo run --release -p lowbit-benches --bin
//! wake-latency`). Timestamps inside a 14336×4096 nf4 matvec at two threads (a temporary
//! instrumentation, not kept) showed the calling thread starting its first row 35 µs into the
//! call and the second thread 40–90 µs in, about a tenth of the call's 1.2 ms; on the team,
//! both started within 7 µs.
//!
//! Team workers instead spin on one atomic word for a while (`SPIN`) after each job, so a job
//! published within that time starts on every worker within about a microsecond; after it they
//! park on a condition variable, and the next job pays one wake-up. The caller takes part in
//! every job, so a team of `n` has `n − 1` workers.
//!
//! The job is a borrowed closure, so the caller must not return while a worker may still call
//! it. Workers *enter* a job by incrementing a count in the same word as the job's epoch; when
//! the caller runs out of work it *closes* the job (a flag in that word, after which nobody can
//! enter) and waits for the count to reach zero. A worker that was descheduled and missed the
//! job does not hold the caller up.

use crossbeam_utils::CachePadded;
use std::cell::UnsafeCell;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Condvar, Mutex, OnceLock, TryLockError};
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking. Decode's gaps between calls (norms, rope,
/// sampling) are microseconds to a few hundred of them; a parked worker costs the next call a
/// wake-up of 20–50 µs, a spinning one costs an otherwise idle core.
const SPIN: Duration = Duration::from_millis(2);

/// Bits of the state word: the job's epoch above `CLOSED`, the workers inside it below.
const CLOSED: u64 = 1 << 32;
const ACTIVE: u64 = CLOSED - 1;
const EPOCH_SHIFT: u32 = 33;

/// A job as the workers see it: the caller's closure with its lifetime erased. Only read by a
/// worker that entered the job, and the caller outlives every such worker's use of it.
type Job = *const (dyn Fn() + Sync);

struct Shared {
    /// Epoch, closed flag and active count. Workers spin reading it, so it has a line of its own.
    state: CachePadded<AtomicU64>,
    /// The current job; written only by the submitting caller while no worker is inside a job.
    job: CachePadded<UnsafeCell<Option<Job>>>,
    /// Held by the submitting caller for a whole job: one job at a time.
    submit: Mutex<()>,
    /// Workers parked (or about to park) on `wake`.
    sleepers: CachePadded<AtomicUsize>,
    park: Mutex<()>,
    wake: Condvar,
    /// A worker's part of the job panicked; the caller panics in turn.
    panicked: AtomicBool,
}

// SAFETY: `job` is the only non-Sync field. It is written by the one caller holding `submit`,
// only while the state word says no worker is inside a job (none entered the new epoch yet, and
// the previous one was closed and drained), and read by workers only after entering a job, which
// the caller's release store of the new epoch orders after the write.
unsafe impl Sync for Shared {}

/// A team of `size` threads counting the caller.
struct Team {
    shared: &'static Shared,
}

impl Team {
    /// Starts `size − 1` workers. The threads live as long as the process.
    fn start(size: usize) -> Team {
        let shared: &'static Shared = Box::leak(Box::new(Shared {
            state: CachePadded::new(AtomicU64::new(0)),
            job: CachePadded::new(UnsafeCell::new(None)),
            submit: Mutex::new(()),
            sleepers: CachePadded::new(AtomicUsize::new(0)),
            park: Mutex::new(()),
            wake: Condvar::new(),
            panicked: AtomicBool::new(false),
        }));
        for i in 1..size {
            // If the system refuses a thread the team is just smaller: jobs still complete,
            // since the caller does whatever no worker takes.
            let _ = std::thread::Builder::new().name(format!("lowbit-team-{i}")).spawn(move || worker(shared));
        }
        Team { shared }
    }

    /// Runs `body` on the calling thread and on every worker that joins in time, and returns
    /// when all of them have finished it. `body` shares the work out itself (typically by an
    /// atomic task counter) and must leave none undone when the caller's own call returns.
    /// If the team is busy with another caller's job (or this is a worker's nested call),
    /// `body` runs on the calling thread alone.
    fn run(&self, body: &(dyn Fn() + Sync)) {
        let sh = self.shared;
        let _guard = match sh.submit.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return body(),
        };
        // SAFETY: the erased lifetime is never relied on past this call: the job is closed and
        // drained before it returns or unwinds, and cleared below.
        let job: Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), &'static (dyn Fn() + Sync)>(body) };
        // SAFETY: we hold `submit`, and the previous job was closed and drained, so no worker
        // reads the cell until it enters the epoch published next.
        unsafe { *sh.job.get() = Some(job) };
        // The epoch wraps after 2^31 jobs; a worker only compares it for inequality.
        let epoch = (sh.state.load(Relaxed) >> EPOCH_SHIFT).wrapping_add(1) & (u64::MAX >> EPOCH_SHIFT);
        sh.state.store(epoch << EPOCH_SHIFT, SeqCst);
        // Pairs with the worker's increment-then-check in `park`: one of the two sees the other.
        if sh.sleepers.load(SeqCst) > 0 {
            let _p = sh.park.lock().unwrap_or_else(|p| p.into_inner());
            sh.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(body));
        sh.state.fetch_or(CLOSED, AcqRel);
        while sh.state.load(Acquire) & ACTIVE != 0 {
            std::hint::spin_loop();
        }
        // SAFETY: closed and drained: no worker is inside the job or can enter it.
        unsafe { *sh.job.get() = None };
        let others = sh.panicked.swap(false, Relaxed);
        if let Err(p) = mine {
            resume_unwind(p);
        }
        if others {
            panic!("a lowbit team worker panicked");
        }
    }
}

fn worker(sh: &'static Shared) {
    let mut seen = 0u64;
    loop {
        let state = wait_for_epoch(sh, seen);
        seen = state >> EPOCH_SHIFT;
        let mut cur = state;
        // Enter the job unless the caller closed it (or a newer one replaced it) meanwhile.
        while cur >> EPOCH_SHIFT == seen && cur & CLOSED == 0 {
            match sh.state.compare_exchange_weak(cur, cur + 1, Acquire, Relaxed) {
                Ok(_) => {
                    // SAFETY: entered: the caller wrote the job before publishing this epoch
                    // (ordered by the acquire above) and keeps it alive until we leave.
                    let job = unsafe { (*sh.job.get()).expect("a published job") };
                    // SAFETY: as above; the closure is Sync, shared by every participant.
                    if catch_unwind(AssertUnwindSafe(|| unsafe { (*job)() })).is_err() {
                        sh.panicked.store(true, Relaxed);
                    }
                    sh.state.fetch_sub(1, Release);
                    break;
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// Spins until the epoch moves past `seen`, parking after [`SPIN`]; returns the state word.
fn wait_for_epoch(sh: &Shared, seen: u64) -> u64 {
    let mut since = Instant::now();
    let mut spins = 0u32;
    loop {
        let s = sh.state.load(Acquire);
        if s >> EPOCH_SHIFT != seen {
            return s;
        }
        std::hint::spin_loop();
        spins = spins.wrapping_add(1);
        if spins.is_multiple_of(256) && since.elapsed() > SPIN {
            let mut g = sh.park.lock().unwrap_or_else(|p| p.into_inner());
            sh.sleepers.fetch_add(1, SeqCst);
            while sh.state.load(SeqCst) >> EPOCH_SHIFT == seen {
                g = sh.wake.wait(g).unwrap_or_else(|p| p.into_inner());
            }
            sh.sleepers.fetch_sub(1, SeqCst);
            drop(g);
            since = Instant::now();
        }
    }
}

/// Runs `f(state, i)` for every task `i < n`, over the team as large as the current rayon pool
/// (on the calling thread alone when that pool has one thread), with one `init()` state per
/// thread that takes part. For decode's short parallel loops; long ones (prefill) do as well on
/// rayon, and leaving it to them keeps the pool's and the team's threads from competing.
///
/// Each of the team's threads starts on its own contiguous share of the tasks (so the weight
/// rows a thread streams are adjacent, as the hardware prefetchers like); a thread that finishes
/// takes the next tasks of the other shares, so a late or missing worker costs nothing but its
/// share's wait.
pub fn for_each_task<S>(n: usize, init: impl Fn() -> S + Sync + Send, f: impl Fn(&mut S, usize) + Sync + Send) {
    let size = rayon::current_num_threads();
    if !enabled() {
        use rayon::prelude::*;
        return (0..n).into_par_iter().for_each_init(init, f);
    }
    let Some(team) = team(size) else {
        let mut state = init();
        return (0..n).for_each(|i| f(&mut state, i));
    };
    let share = |p: usize| p * n / size;
    // Next task of each share, on lines of their own: every thread bumps its own per task.
    let next: Vec<CachePadded<AtomicUsize>> = (0..size).map(|p| CachePadded::new(AtomicUsize::new(share(p)))).collect();
    let joined = AtomicUsize::new(0);
    team.run(&|| {
        let me = joined.fetch_add(1, Relaxed) % size;
        let mut state = None;
        for p in (me..size).chain(0..me) {
            let end = share(p + 1);
            loop {
                let i = next[p].fetch_add(1, Relaxed);
                if i >= end {
                    break;
                }
                f(state.get_or_insert_with(&init), i);
            }
        }
    });
}

/// [`for_each_task`] over the `chunk`-long pieces of `data` (the last one shorter):
/// `f(state, index, piece)`.
pub fn for_each_chunk_mut<T: Send, S>(
    data: &mut [T],
    chunk: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [T]) + Sync + Send,
) {
    assert!(chunk > 0, "for_each_chunk_mut: chunk of 0");
    let pieces = Pieces { ptr: data.as_mut_ptr(), len: data.len() };
    let pieces = &pieces;
    for_each_task(data.len().div_ceil(chunk), init, |s, i| {
        let start = i * chunk;
        // SAFETY: each task index is handed out once, and piece i lies inside `data`, which
        // stays mutably borrowed for the whole call.
        let piece = unsafe { std::slice::from_raw_parts_mut(pieces.ptr.add(start), chunk.min(pieces.len - start)) };
        f(s, i, piece);
    });
}

/// A mutable slice shared with the team's threads, which each form the disjoint piece that the
/// task counter handed to them alone.
struct Pieces<T> {
    ptr: *mut T,
    len: usize,
}

// SAFETY: see `for_each_chunk_mut`: threads only form disjoint subslices, and `T: Send`.
unsafe impl<T: Send> Sync for Pieces<T> {}

/// Whether the team is on: `LOWBIT_TEAM=0` (read once) turns it off, and decode's loops then run
/// on rayon — for a machine shared with other work, where a core spinning for a few
/// milliseconds after each token costs more than the wake-ups it saves.
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("LOWBIT_TEAM").map_or(true, |v| v != "0"))
}

/// The process's team of `size` threads, started on first use; `None` for one thread.
fn team(size: usize) -> Option<&'static Team> {
    static TEAMS: OnceLock<Mutex<Vec<(usize, &'static Team)>>> = OnceLock::new();
    if size < 2 {
        return None;
    }
    let mut teams = TEAMS.get_or_init(Default::default).lock().unwrap_or_else(|p| p.into_inner());
    if let Some(&(_, t)) = teams.iter().find(|(s, _)| *s == size) {
        return Some(t);
    }
    let t: &'static Team = Box::leak(Box::new(Team::start(size)));
    teams.push((size, t));
    Some(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Every task runs exactly once, across many jobs, with and without parked workers.
    #[test]
    fn runs_every_task_once() {
        let t = team(3).unwrap();
        for round in 0..200 {
            let n = round % 37 + 1;
            let next = AtomicUsize::new(0);
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            t.run(&|| loop {
                let i = next.fetch_add(1, Relaxed);
                if i >= n {
                    break;
                }
                hits[i].fetch_add(1, Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Relaxed) == 1), "round {round}");
            if round == 100 {
                // Let the workers park, so the next job has to wake them.
                std::thread::sleep(SPIN * 2);
            }
        }
    }

    /// Concurrent callers and nested calls fall back to running alone instead of waiting.
    #[test]
    fn concurrent_and_nested_calls_complete() {
        let t = team(2).unwrap();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..100 {
                        let count = AtomicUsize::new(0);
                        let next = AtomicUsize::new(0);
                        t.run(&|| {
                            while next.fetch_add(1, Relaxed) < 8 {
                                t.run(&|| {
                                    count.fetch_add(1, Relaxed);
                                });
                            }
                        });
                        assert_eq!(count.load(Relaxed), 8);
                    }
                });
            }
        });
    }

    /// A panic in a worker's or the caller's share reaches the caller, and the team still works.
    #[test]
    fn panics_reach_the_caller() {
        let t = team(4).unwrap();
        for _ in 0..20 {
            let r = catch_unwind(AssertUnwindSafe(|| t.run(&|| panic!("boom"))));
            assert!(r.is_err());
        }
        let n = AtomicUsize::new(0);
        t.run(&|| {
            n.fetch_add(1, Relaxed);
        });
        assert!(n.load(Relaxed) >= 1);
    }
}
