//! What it costs to start a short parallel job on a second thread that has been idle for a
//! while — the cost decode pays hundreds of times per token. Three ways, after idle gaps of 0,
//! 20, 100 and 1000 µs on the calling thread:
//!
//! - `unpark`: a parked thread woken by `Thread::unpark` (how a sleeping rayon worker is woken):
//!   the time until it runs, and the time the waker spends in the call;
//! - `rayon`: an empty two-task `join` on a two-thread pool, called from inside it (as the CLI
//!   does), round trip;
//! - `team`: an empty two-task job on lowbit's spinning team ([`lowbit_kernels::team`]), round
//!   trip.
//!
//! Medians and 90th percentiles of 200 trials each.
//! `cargo run --release -p lowbit-benches --bin wake-latency`

use std::sync::atomic::{AtomicU64, Ordering::*};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TRIALS: usize = 200;
const GAPS_US: [u64; 4] = [0, 20, 100, 1000];

fn busy_wait(us: u64) {
    let t = Instant::now();
    while t.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

/// (median, 90th percentile) in µs.
fn quantiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[v.len() * 9 / 10])
}

fn unpark(gap: u64) -> ((f64, f64), (f64, f64)) {
    let base = Instant::now();
    let sent = Arc::new(AtomicU64::new(0));
    let woke = Arc::new(AtomicU64::new(0));
    let (s2, w2) = (sent.clone(), woke.clone());
    let sleeper = std::thread::spawn(move || loop {
        std::thread::park();
        let s = s2.load(Acquire);
        if s == u64::MAX {
            break;
        }
        if s != 0 && w2.load(Acquire) == 0 {
            w2.store(base.elapsed().as_nanos() as u64, Release);
        }
    });
    let (mut latency, mut cost) = (Vec::new(), Vec::new());
    for _ in 0..TRIALS {
        busy_wait(gap);
        woke.store(0, Release);
        let t = base.elapsed().as_nanos() as u64;
        sent.store(t, Release);
        let a = Instant::now();
        sleeper.thread().unpark();
        cost.push(a.elapsed().as_secs_f64() * 1e6);
        while woke.load(Acquire) == 0 {
            std::hint::spin_loop();
        }
        latency.push((woke.load(Acquire) - t) as f64 / 1e3);
        sent.store(0, Release);
    }
    sent.store(u64::MAX, Release);
    sleeper.thread().unpark();
    sleeper.join().expect("sleeper thread");
    (quantiles(latency), quantiles(cost))
}

fn round_trips(gap: u64, job: impl Fn()) -> (f64, f64) {
    let v = (0..TRIALS)
        .map(|_| {
            busy_wait(gap);
            let t = Instant::now();
            job();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    quantiles(v)
}

fn main() {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().expect("thread pool");
    println!(
        "{:>8} | {:>24} | {:>22} | {:>18} | {:>18}",
        "idle µs", "unpark: wake p50/p90", "waker's call p50/p90", "rayon p50/p90", "team p50/p90"
    );
    for gap in GAPS_US {
        let ((wl50, wl90), (wc50, wc90)) = unpark(gap);
        let (r50, r90, t50, t90) = pool.install(|| {
            let (r50, r90) = round_trips(gap, || {
                rayon::join(|| std::hint::black_box(0), || std::hint::black_box(1));
            });
            let (t50, t90) = round_trips(gap, || {
                lowbit_kernels::team::for_each_task(
                    2,
                    || (),
                    |_, i| {
                        std::hint::black_box(i);
                    },
                )
            });
            (r50, r90, t50, t90)
        });
        println!(
            "{gap:>8} | {:>11.1} / {:>10.1} | {:>10.1} / {:>9.1} | {:>8.1} / {:>7.1} | {:>8.1} / {:>7.1}",
            wl50, wl90, wc50, wc90, r50, r90, t50, t90
        );
    }
}
