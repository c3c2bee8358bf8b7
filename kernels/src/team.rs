//! A team of worker threads that spin between jobs, for the forward pass's parallel loops.
//!
//! Decode makes hundreds of parallel calls per token, each a millisecond or less. Through rayon,
//! a worker that found no work for a few dozen rounds goes to sleep on a futex, and the next
//! call has to wake it: tens of microseconds to reach the sleeper and more inside the waker's
//! system call, against about one for a thread still spinning — a tenth of a large matvec's
//! time (`cargo run --release -p lowbit-benches --bin wake-latency`; the figures are in
//! docs/PERFORMANCE.md).
//!
//! Team workers instead spin on one atomic word for a while (`SPIN`) after each job, so a job
//! published within that time starts on every worker within about a microsecond; after it they
//! park on a condition variable, and the next job pays one wake-up. The caller takes part in
//! every job, so a team of `n` has `n − 1` workers. A team with more threads than the machine
//! has cores yields instead of spinning; a loop nested inside a job runs on its thread alone;
//! `LOWBIT_TEAM=0` sends the loops back to rayon ([`enabled`]).
//!
//! A [`Team`] belongs to its owner (a runtime engine holds one) and stops its threads when
//! dropped; [`Team::install`] puts it in charge of the loops the calling thread runs, so two
//! engines decode in parallel, each on its own threads. Loops with no installed team use a
//! process-wide team per pool size.
//!
//! The job is a borrowed closure, so the caller must not return while a worker may still call
//! it. Workers *enter* a job by incrementing a count in the same word as the job's epoch; when
//! the caller runs out of work it *closes* the job (a flag in that word, after which nobody can
//! enter) and waits for the count to reach zero. A worker that was descheduled and missed the
//! job does not hold the caller up.

use crossbeam_utils::CachePadded;
use std::any::Any;
use std::cell::RefCell;
use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::{Arc, Condvar, Mutex, OnceLock, TryLockError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking. Decode's gaps between calls (norms, rope,
/// sampling) are microseconds to a few hundred of them; a parked worker costs the next call a
/// wake-up, a spinning one costs an otherwise idle core.
const SPIN: Duration = Duration::from_millis(2);

/// Bits of the state word: the job's epoch above `CLOSED`, the workers inside it below.
const CLOSED: u64 = 1 << 32;
const ACTIVE: u64 = CLOSED - 1;
const EPOCH_SHIFT: u32 = 33;

/// Teams are kept per size up to this many threads; a larger rayon pool gets a team this large.
const MAX_TEAM: usize = 256;

/// A job as the workers see it: the caller's closure with its lifetime erased. Only read by a
/// worker that entered the job, and the caller outlives every such worker's use of it.
type Job = *const (dyn Fn() + Sync);

struct Shared {
    /// Epoch, closed flag and active count. Workers spin reading it, so it has a line of its own.
    /// It starts closed, so no worker can enter before the first job is published.
    state: CachePadded<AtomicU64>,
    /// The current job; written only by the submitting caller while no worker is inside a job.
    job: CachePadded<UnsafeCell<Option<Job>>>,
    /// Held by the submitting caller for a whole job: one job at a time.
    submit: Mutex<()>,
    /// Workers parked (or about to park) on `wake`.
    sleepers: CachePadded<AtomicUsize>,
    park: Mutex<()>,
    wake: Condvar,
    /// The first panic of a worker's share of the current job, re-raised on the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
    /// More threads than the machine has cores: waiting threads yield instead of spinning.
    crowded: bool,
    /// The team is being dropped: workers exit at the next epoch.
    quit: AtomicBool,
}

// SAFETY: `job` is the only field that is not Send: a pointer to the caller's closure, which
// only the protocol described on `Sync` below hands between threads (workers read it inside a
// job the caller keeps alive); every other field is Send.
unsafe impl Send for Shared {}
// SAFETY: `job` is the only non-Sync field. It is written by the one caller holding `submit`,
// only while the state word says no worker is inside a job (none entered the new epoch yet, and
// the previous one was closed and drained), and read by workers only after entering a job, which
// the caller's release store of the new epoch orders after the write.
unsafe impl Sync for Shared {}

thread_local! {
    /// This thread is running a share of a team job (as a worker or as its caller): a nested
    /// parallel loop runs on it alone.
    static IN_JOB: Cell<bool> = const { Cell::new(false) };
    /// The team [`Team::install`] put in charge of this thread's loops, if any.
    static CURRENT: RefCell<Option<Arc<Inner>>> = const { RefCell::new(None) };
}

/// Marks the current thread as inside a job until dropped.
struct InJob(bool);

impl InJob {
    fn enter() -> InJob {
        InJob(IN_JOB.with(|f| f.replace(true)))
    }
}

impl Drop for InJob {
    fn drop(&mut self) {
        IN_JOB.with(|f| f.set(self.0));
    }
}

/// A team of threads that spin between jobs, owned by whoever runs decode loops on it (an engine):
/// its workers stop when it is dropped. [`Team::install`] makes it the team of the loops the
/// calling thread runs; without one, loops use a process-wide team per pool size. Teams of
/// different owners run their jobs at the same time; callers sharing one take turns (a caller
/// that finds it busy runs its loop alone).
pub struct Team {
    inner: Arc<Inner>,
    threads: Vec<JoinHandle<()>>,
}

/// What [`Team::install`] shares with the thread: the job state and the team's size.
struct Inner {
    shared: Arc<Shared>,
    size: usize,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team").field("size", &self.inner.size).finish()
    }
}

/// Closes the published job and waits until every worker that entered it has left — also when
/// the caller's own share unwinds, so no worker can touch the borrowed closure afterwards.
struct Drain<'a>(&'a Shared);

impl Drop for Drain<'_> {
    fn drop(&mut self) {
        let sh = self.0;
        sh.state.fetch_or(CLOSED, AcqRel);
        let mut spins = 0u32;
        while sh.state.load(Acquire) & ACTIVE != 0 {
            // A worker preempted inside its task holds us up for a timeslice; let it run.
            spins = spins.wrapping_add(1);
            if sh.crowded || spins.is_multiple_of(1024) {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        // SAFETY: closed and drained: no worker is inside the job or can enter it.
        unsafe { *sh.job.get() = None };
        if std::thread::panicking() {
            // The caller's own panic goes on; a worker's from the same job must not surface in
            // the next one. Leaked, not dropped: a payload's drop could panic mid-unwind.
            if let Some(p) = sh.panic.lock().unwrap_or_else(|p| p.into_inner()).take() {
                std::mem::forget(p);
            }
        }
    }
}

impl Team {
    /// A team of `size` threads counting the caller: starts `size − 1` workers (at most
    /// `MAX_TEAM` (256) in all), which stop when the team is dropped.
    pub fn new(size: usize) -> Team {
        Team::start(size.clamp(1, MAX_TEAM))
    }

    /// Threads taking part in a job, the caller included.
    pub fn size(&self) -> usize {
        self.inner.size
    }

    /// Runs `f` with this team in charge of the parallel loops the calling thread runs
    /// ([`for_each_task`], [`for_each_chunk_mut`]) instead of the process-wide one.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arc<Inner>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                let prev = self.0.take();
                CURRENT.with(|c| *c.borrow_mut() = prev);
            }
        }
        let prev = CURRENT.with(|c| c.borrow_mut().replace(self.inner.clone()));
        let _restore = Restore(prev);
        f()
    }

    fn start(size: usize) -> Team {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let shared = Arc::new(Shared {
            state: CachePadded::new(AtomicU64::new(CLOSED)),
            job: CachePadded::new(UnsafeCell::new(None)),
            submit: Mutex::new(()),
            sleepers: CachePadded::new(AtomicUsize::new(0)),
            park: Mutex::new(()),
            wake: Condvar::new(),
            panic: Mutex::new(None),
            crowded: size > cores,
            quit: AtomicBool::new(false),
        });
        let threads = (1..size)
            .filter_map(|i| {
                // If the system refuses a thread the team is just smaller: jobs still complete,
                // since the caller does whatever no worker takes.
                let sh = shared.clone();
                std::thread::Builder::new().name(format!("lowbit-team-{i}")).spawn(move || worker(&sh)).ok()
            })
            .collect();
        Team { inner: Arc::new(Inner { shared, size }), threads }
    }

    /// Runs `body` on the calling thread and on every worker that joins in time, and returns
    /// when all of them have finished it. `body` shares the work out itself (typically by an
    /// atomic task counter) and must leave none undone when the caller's own call returns.
    /// If the team is busy with another caller's job, `body` runs on the calling thread alone.
    /// A panic in any share reaches the caller once every share has finished.
    #[cfg(test)]
    fn run(&self, body: &(dyn Fn() + Sync)) {
        self.inner.run(body)
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let sh = &self.inner.shared;
        // Under the submit lock no job is running; a new epoch with `quit` set sends every
        // worker, spinning or parked, out of its loop.
        let _guard = sh.submit.lock().unwrap_or_else(|p| p.into_inner());
        sh.quit.store(true, SeqCst);
        let epoch = (sh.state.load(Relaxed) >> EPOCH_SHIFT).wrapping_add(1) & (u64::MAX >> EPOCH_SHIFT);
        sh.state.store((epoch << EPOCH_SHIFT) | CLOSED, SeqCst);
        {
            let _p = sh.park.lock().unwrap_or_else(|p| p.into_inner());
            sh.wake.notify_all();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Inner {
    fn run(&self, body: &(dyn Fn() + Sync)) {
        let sh = &*self.shared;
        let _guard = match sh.submit.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return body(),
        };
        let _in_job = InJob::enter();
        {
            // SAFETY: the erased lifetime is never relied on past this block: `Drain` closes
            // the job, waits for the workers inside it and clears the cell before the block is
            // left, by return or by unwinding.
            let job: Job = unsafe { std::mem::transmute::<&(dyn Fn() + Sync), &'static (dyn Fn() + Sync)>(body) };
            // SAFETY: we hold `submit`, and the previous job was closed and drained, so no
            // worker reads the cell until it enters the epoch published next.
            unsafe { *sh.job.get() = Some(job) };
            let _drain = Drain(sh);
            // The epoch wraps after 2^31 jobs; a worker only compares it for inequality.
            let epoch = (sh.state.load(Relaxed) >> EPOCH_SHIFT).wrapping_add(1) & (u64::MAX >> EPOCH_SHIFT);
            sh.state.store(epoch << EPOCH_SHIFT, SeqCst);
            // Pairs with the worker's increment-then-check in `wait_for_epoch`: one of the two
            // sees the other.
            if sh.sleepers.load(SeqCst) > 0 {
                let _p = sh.park.lock().unwrap_or_else(|p| p.into_inner());
                sh.wake.notify_all();
            }
            body();
        }
        // Drained: every worker's panic, if any, is stored.
        if let Some(p) = sh.panic.lock().unwrap_or_else(|p| p.into_inner()).take() {
            resume_unwind(p);
        }
    }
}

fn worker(sh: &Shared) {
    let _in_job = InJob::enter();
    let mut seen = 0u64;
    loop {
        let state = wait_for_epoch(sh, seen);
        if sh.quit.load(SeqCst) {
            return;
        }
        seen = state >> EPOCH_SHIFT;
        let mut cur = state;
        // Enter the job unless the caller closed it (or a newer one replaced it) meanwhile.
        while cur >> EPOCH_SHIFT == seen && cur & CLOSED == 0 {
            match sh.state.compare_exchange_weak(cur, cur + 1, Acquire, Relaxed) {
                Ok(_) => {
                    // SAFETY: entered an open job: the caller wrote it before publishing this
                    // epoch (ordered by the acquire above) and keeps it alive until we leave.
                    if let Some(job) = unsafe { *sh.job.get() } {
                        // SAFETY: as above; the closure is Sync, shared by every participant.
                        if let Err(p) = catch_unwind(AssertUnwindSafe(|| unsafe { (*job)() })) {
                            // Kept for the caller (dropping a payload could itself panic here).
                            sh.panic.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(p);
                        }
                    }
                    sh.state.fetch_sub(1, Release);
                    break;
                }
                Err(now) => cur = now,
            }
        }
    }
}

/// Waits until the epoch moves past `seen` — spinning (or yielding, when the team has more
/// threads than the machine has cores), and parking after [`SPIN`]; returns the state word.
fn wait_for_epoch(sh: &Shared, seen: u64) -> u64 {
    let mut since = Instant::now();
    let mut spins = 0u32;
    loop {
        let s = sh.state.load(Acquire);
        if s >> EPOCH_SHIFT != seen {
            return s;
        }
        if sh.crowded {
            std::thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
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
/// thread that takes part. Every parallel loop of a forward pass runs here, decode's short ones
/// and a prompt's longer ones alike: a loop left to rayon would compete with the team's
/// spinning threads, and its workers fall asleep between a prompt's loops.
///
/// Each of the team's threads starts on its own contiguous share of the tasks (so the weight
/// rows a thread streams are adjacent, as the hardware prefetchers like); a thread that finishes
/// takes the next tasks of the other shares, so a late or missing worker costs nothing but its
/// share's wait.
pub fn for_each_task<S>(n: usize, init: impl Fn() -> S + Sync + Send, f: impl Fn(&mut S, usize) + Sync + Send) {
    let installed = CURRENT.with(|c| c.borrow().clone());
    let size = installed.as_ref().map_or_else(default_size, |t| t.size);
    let serial = || {
        let mut state = init();
        (0..n).for_each(|i| f(&mut state, i));
    };
    // One task, or a loop nested inside a team job: nothing to share out.
    if n <= 1 || IN_JOB.with(Cell::get) {
        return serial();
    }
    if !enabled() {
        use rayon::prelude::*;
        return (0..n).into_par_iter().for_each_init(&init, &f);
    }
    let team = match &installed {
        Some(t) if t.size > 1 => &**t,
        Some(_) => return serial(),
        None => match team(size) {
            Some(t) => &*t.inner,
            None => return serial(),
        },
    };
    // Share p starts at ⌊p·n/size⌋ (in u128: p·n may not fit a usize).
    let share = |p: usize| (p as u128 * n as u128 / size as u128) as usize;
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

/// The threads [`for_each_task`] shares its tasks among on this thread (1 inside a job).
pub fn threads() -> usize {
    if IN_JOB.with(Cell::get) {
        return 1;
    }
    CURRENT.with(|c| c.borrow().as_ref().map(|t| t.size)).unwrap_or_else(default_size)
}

fn default_size() -> usize {
    rayon::current_num_threads().min(MAX_TEAM)
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

/// Row `i` of `a` (`wa` wide) and of `b` (`wb` wide) together through `row(i, a_i, b_i)`: with
/// `parallel`, in pieces of whole rows (a few per thread) on the team's threads, else in turn on
/// the calling thread. For a prompt's per-token loops (norms, RoPE, activation quantization),
/// whose rows are each their own work.
pub fn for_each_row_pair<A: Send, B: Send>(
    a: &mut [A],
    wa: usize,
    b: &mut [B],
    wb: usize,
    parallel: bool,
    row: impl Fn(usize, &mut [A], &mut [B]) + Sync + Send,
) {
    let rows = a.len() / wa.max(1);
    if !parallel || rows < 2 {
        a.chunks_mut(wa).zip(b.chunks_mut(wb)).enumerate().for_each(|(i, (a, b))| row(i, a, b));
        return;
    }
    let per = rows.div_ceil(4 * threads()).max(1);
    let mut pieces: Vec<(&mut [A], &mut [B])> = a.chunks_mut(per * wa).zip(b.chunks_mut(per * wb)).collect();
    for_each_chunk_mut(
        &mut pieces,
        1,
        || (),
        |_, p, piece| {
            for (a, b) in piece.iter_mut() {
                a.chunks_mut(wa).zip(b.chunks_mut(wb)).enumerate().for_each(|(j, (a, b))| row(p * per + j, a, b));
            }
        },
    );
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

/// The process's team of `size` threads (at most [`MAX_TEAM`]), started on first use; `None` for
/// one thread. Lock-free after the first call for a size.
fn team(size: usize) -> Option<&'static Team> {
    static TEAMS: [OnceLock<Team>; MAX_TEAM + 1] = [const { OnceLock::new() }; MAX_TEAM + 1];
    if size < 2 {
        return None;
    }
    Some(TEAMS[size.min(MAX_TEAM)].get_or_init(|| Team::start(size.min(MAX_TEAM))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::thread::ThreadId;

    /// A job whose tasks are slow enough that the workers take part: every task runs exactly
    /// once, and threads other than the caller ran some of them.
    fn slow_job(t: &Team, n: usize) -> HashSet<ThreadId> {
        let next = AtomicUsize::new(0);
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let who = Mutex::new(HashSet::new());
        t.run(&|| loop {
            let i = next.fetch_add(1, Relaxed);
            if i >= n {
                break;
            }
            hits[i].fetch_add(1, Relaxed);
            who.lock().unwrap().insert(std::thread::current().id());
            std::thread::sleep(Duration::from_micros(200));
        });
        assert!(hits.iter().all(|h| h.load(Relaxed) == 1));
        who.into_inner().unwrap()
    }

    #[test]
    fn runs_every_task_once_and_workers_take_part() {
        let t = team(3).unwrap();
        let me = std::thread::current().id();
        let mut helped = 0;
        for round in 0..40 {
            if slow_job(t, round % 9 + 4).iter().any(|&id| id != me) {
                helped += 1;
            }
            if round == 20 {
                // Let the workers park, so the next job has to wake them.
                std::thread::sleep(SPIN * 2);
            }
        }
        assert!(helped > 0, "no worker ever took part");
    }

    /// Concurrent callers and nested calls complete, without waiting on each other: a call
    /// that finds the team busy runs alone (a nested call on a team thread always does; one on
    /// another caller's thread may find the team free again and share its work out).
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
                                // A work-sharing body, as every real one is: three tasks in all,
                                // however many threads take part.
                                let inner = AtomicUsize::new(0);
                                t.run(&|| {
                                    while inner.fetch_add(1, Relaxed) < 3 {
                                        count.fetch_add(1, Relaxed);
                                    }
                                });
                            }
                        });
                        assert_eq!(count.load(Relaxed), 24);
                    }
                });
            }
        });
    }

    /// Two owned teams run jobs at the same time, each with its own workers (one process-wide
    /// team would run the second caller's job on that caller alone); an installed team is the
    /// one loops use; dropping a team stops its threads.
    #[test]
    fn owned_teams_work_side_by_side_and_stop_when_dropped() {
        let (a, b) = (Team::new(3), Team::new(3));
        assert_eq!((a.size(), a.threads.len()), (3, 2));
        let barrier = std::sync::Barrier::new(2);
        let helped = std::thread::scope(|s| {
            let jobs = [&a, &b].map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let me = std::thread::current().id();
                    (0..20)
                        .filter(|_| {
                            barrier.wait();
                            slow_job(t, 8).iter().any(|&id| id != me)
                        })
                        .count()
                })
            });
            jobs.map(|j| j.join().unwrap())
        });
        assert!(helped.iter().all(|&h| h > 0), "both teams shared their jobs while running together: {helped:?}");
        // Loops inside `install` run on that team: its workers, not the global team's.
        let names = Mutex::new(HashSet::new());
        a.install(|| {
            for_each_task(
                64,
                || (),
                |_, _| {
                    names.lock().unwrap().insert(std::thread::current().name().map(str::to_string));
                    std::thread::sleep(Duration::from_micros(100));
                },
            )
        });
        assert!(
            names.into_inner().unwrap().len() > 1 || std::thread::available_parallelism().map_or(1, |n| n.get()) < 2
        );
        // Dropping joins the workers (it would hang if one did not stop), spinning or parked.
        drop(a);
        std::thread::sleep(SPIN * 2);
        drop(b);
    }

    /// A panic in the caller's share, or in a worker's share alone, reaches the caller with its
    /// message, and the team keeps working.
    #[test]
    fn panics_reach_the_caller() {
        let t = team(4).unwrap();
        for _ in 0..20 {
            let r = catch_unwind(AssertUnwindSafe(|| t.run(&|| panic!("boom"))));
            assert_eq!(r.unwrap_err().downcast_ref::<&str>(), Some(&"boom"));
        }
        let me = std::thread::current().id();
        let mut worker_panics = 0;
        for _ in 0..20 {
            let next = AtomicUsize::new(0);
            let r = catch_unwind(AssertUnwindSafe(|| {
                t.run(&|| {
                    while next.fetch_add(1, Relaxed) < 16 {
                        assert!(std::thread::current().id() == me, "worker share");
                        std::thread::sleep(Duration::from_micros(200));
                    }
                })
            }));
            if let Err(p) = r {
                let msg = p.downcast_ref::<&str>().copied().or(p.downcast_ref::<String>().map(String::as_str));
                assert_eq!(msg, Some("worker share"));
                worker_panics += 1;
            }
        }
        assert!(worker_panics > 0, "no worker ever took part");
        // Nothing left over from the worker panics: a clean job afterwards completes without
        // one (it would panic here, failing the test).
        slow_job(t, 8);
    }
}
