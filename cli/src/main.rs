//! `lowbit`: convert checkpoints to one quantized file, inspect and verify it, and run it.

mod args;
mod cmd;
mod npy;
mod stats;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    // A file-size limit (`ulimit -f`) would otherwise kill the process with SIGXFSZ in the middle
    // of a write; ignored, the write fails with EFBIG, which the writer reports as a full disk
    // and answers by deleting its temporary file.
    // SAFETY: setting a signal's disposition to SIG_IGN before any thread is started has no
    // preconditions; no handler code runs.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let cli = args::Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: args::Cli) -> anyhow::Result<()> {
    // An invalid LOWBIT_ISA is an error up front, not a silent fallback.
    lowbit_kernels::try_kernels()?;
    let threads = match cli.threads {
        Some(0) => anyhow::bail!("--threads must be at least 1"),
        Some(n) => n,
        // 0 lets rayon choose: RAYON_NUM_THREADS if set, else every core.
        None => 0,
    };
    match cli.command {
        args::Command::Convert(a) => global_pool(threads, || cmd::convert::run(a)),
        args::Command::Inspect(a) => cmd::inspect::run(a),
        args::Command::Verify(a) => cmd::inspect::verify(a),
        args::Command::Run(a) => in_pool(threads, || cmd::run::run(a)),
        args::Command::Chat(a) => in_pool(threads, || cmd::run::chat(a)),
        args::Command::Logits(a) => in_pool(threads, || cmd::logits::run(a)),
        args::Command::Perplexity(a) => in_pool(threads, || cmd::perplexity::run(a)),
        args::Command::Cpu(a) => global_pool(threads, || cmd::cpu(a)),
        args::Command::Synth(a) => global_pool(threads, || cmd::synth(a)),
    }
}

/// Runs `f` on the global rayon pool of `threads` workers (the converter's pipeline blocks on
/// channels from the calling thread, so that thread must not be one of the workers).
fn global_pool(threads: usize, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    f()
}

/// Runs `f` as a worker of a pool of `threads`. A forward pass makes hundreds of parallel calls
/// per token; issued from outside the pool, each one wakes a worker and puts the caller to
/// sleep on a futex (a third of the time at one thread went to the scheduler). From inside,
/// the caller takes part in the work and one thread needs no wake-ups at all.
fn in_pool(threads: usize, f: impl FnOnce() -> anyhow::Result<()> + Send) -> anyhow::Result<()> {
    rayon::ThreadPoolBuilder::new().num_threads(threads).build()?.install(f)
}
