//! Opt-in per-operation timing of the forward pass (`lowbit run --profile`): where a decode step
//! or a prefill spends its time, by operation and, for the matrix products, by weight role and
//! scheme. Off by default; when off, each timed region costs one relaxed load.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Which kind of forward pass an operation ran in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// More than one new token (a prompt).
    Prefill,
    /// One new token.
    Decode,
}

impl Phase {
    /// The phase of a pass over `tokens` new tokens.
    pub fn of(tokens: usize) -> Phase {
        if tokens > 1 {
            Phase::Prefill
        } else {
            Phase::Decode
        }
    }

    /// Lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Prefill => "prefill",
            Phase::Decode => "decode",
        }
    }
}

/// One row of a [`ProfileReport`].
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    /// The phase.
    pub phase: Phase,
    /// The operation, e.g. `attention` or `matmul gate/up (nf4)`.
    pub op: String,
    /// Total wall time on the calling thread (parallel regions count once, start to end).
    pub total: Duration,
    /// How many times it ran.
    pub calls: u64,
}

/// Accumulated timings, largest first within each phase.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProfileReport {
    /// The rows.
    pub ops: Vec<OpTime>,
}

impl ProfileReport {
    /// Total time of one phase.
    pub fn phase_total(&self, phase: Phase) -> Duration {
        self.ops.iter().filter(|o| o.phase == phase).map(|o| o.total).sum()
    }

    /// A plain-text table (one line per operation, per phase, with its share of the phase).
    /// `per` divides each phase's times, e.g. by the number of decode steps to get per-step
    /// figures; `None` prints totals.
    pub fn table(&self, per: impl Fn(Phase) -> Option<u64>) -> String {
        let mut s = String::new();
        for phase in [Phase::Prefill, Phase::Decode] {
            let total = self.phase_total(phase);
            if total.is_zero() {
                continue;
            }
            let div = per(phase).filter(|&d| d > 0);
            let unit = if div.is_some() { "µs per pass" } else { "µs total" };
            s.push_str(&format!("{:<30} {:>12} {:>7} {:>8}\n", phase.name(), unit, "share", "calls"));
            for o in self.ops.iter().filter(|o| o.phase == phase) {
                let us = o.total.as_secs_f64() * 1e6 / div.unwrap_or(1) as f64;
                let share = 100.0 * o.total.as_secs_f64() / total.as_secs_f64();
                s.push_str(&format!("  {:<28} {:>12.1} {:>6.1}% {:>8}\n", o.op, us, share, o.calls));
            }
            let us = total.as_secs_f64() * 1e6 / div.unwrap_or(1) as f64;
            s.push_str(&format!("  {:<28} {:>12.1} {:>6.1}%\n", "total", us, 100.0));
        }
        s
    }
}

/// The recorder a model owns.
#[derive(Debug, Default)]
pub struct Profiler {
    on: AtomicBool,
    rows: Mutex<Vec<OpTime>>,
}

impl Profiler {
    /// Turns recording on or off.
    pub fn set_enabled(&self, on: bool) {
        self.on.store(on, Ordering::Relaxed);
    }

    /// Whether recording is on.
    #[inline]
    pub fn enabled(&self) -> bool {
        self.on.load(Ordering::Relaxed)
    }

    /// Starts timing a region (`None` when off).
    #[inline]
    pub fn start(&self) -> Option<Instant> {
        self.enabled().then(Instant::now)
    }

    /// Ends a region begun by [`Profiler::start`]; `op` is built only when recording.
    #[inline]
    pub fn stop(&self, start: Option<Instant>, phase: Phase, op: impl FnOnce() -> String) {
        if let Some(t) = start {
            self.add(phase, op(), t.elapsed());
        }
    }

    /// Adds `d` to the row of (`phase`, `op`).
    pub fn add(&self, phase: Phase, op: String, d: Duration) {
        let mut rows = self.rows.lock().unwrap_or_else(|e| e.into_inner());
        match rows.iter_mut().find(|r| r.phase == phase && r.op == op) {
            Some(r) => {
                r.total += d;
                r.calls += 1;
            }
            None => rows.push(OpTime { phase, op, total: d, calls: 1 }),
        }
    }

    /// What has been recorded, largest first within each phase.
    pub fn report(&self) -> ProfileReport {
        let mut ops = self.rows.lock().unwrap_or_else(|e| e.into_inner()).clone();
        ops.sort_by(|a, b| a.phase.cmp(&b.phase).then(b.total.cmp(&a.total)));
        ProfileReport { ops }
    }

    /// Forgets what has been recorded.
    pub fn reset(&self) {
        self.rows.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_records_nothing_and_on_accumulates_per_phase() {
        let p = Profiler::default();
        let t = p.start();
        p.stop(t, Phase::Decode, || unreachable!("the label is not built when off"));
        assert!(p.report().ops.is_empty());
        p.set_enabled(true);
        p.add(Phase::Decode, "a".into(), Duration::from_micros(5));
        p.add(Phase::Decode, "a".into(), Duration::from_micros(7));
        p.add(Phase::Decode, "b".into(), Duration::from_micros(20));
        p.add(Phase::Prefill, "a".into(), Duration::from_micros(1));
        let r = p.report();
        assert_eq!(r.ops.len(), 3);
        assert_eq!((r.ops[0].phase, r.ops[0].op.as_str()), (Phase::Prefill, "a"));
        assert_eq!((r.ops[1].op.as_str(), r.ops[1].calls), ("b", 1));
        assert_eq!((r.ops[2].total, r.ops[2].calls), (Duration::from_micros(12), 2));
        assert_eq!(r.phase_total(Phase::Decode), Duration::from_micros(32));
        let table = r.table(|ph| (ph == Phase::Decode).then_some(2));
        assert!(table.contains("decode") && table.contains("16.0"), "{table}");
        p.reset();
        assert!(p.report().ops.is_empty());
    }
}
