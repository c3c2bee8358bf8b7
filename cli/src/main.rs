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
    if let Some(n) = cli.threads {
        anyhow::ensure!(n > 0, "--threads must be at least 1");
        rayon::ThreadPoolBuilder::new().num_threads(n).build_global()?;
    }
    match cli.command {
        args::Command::Convert(a) => cmd::convert::run(a),
        args::Command::Inspect(a) => cmd::inspect::run(a),
        args::Command::Verify(a) => cmd::inspect::verify(a),
        args::Command::Run(a) => cmd::run::run(a),
        args::Command::Chat(a) => cmd::run::chat(a),
        args::Command::Logits(a) => cmd::logits::run(a),
        args::Command::Perplexity(a) => cmd::perplexity::run(a),
        args::Command::Cpu(a) => cmd::cpu(a),
        args::Command::Synth(a) => cmd::synth(a),
    }
}
