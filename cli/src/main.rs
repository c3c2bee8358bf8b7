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
    // The tokenizers library panics on some malformed tokenizer.json parts; the runtime catches
    // that and reports a malformed tokenizer, so the library's own panic message stays off the
    // terminal. Every other panic is reported as before.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if !info.location().is_some_and(|l| l.file().contains("/tokenizers-")) {
            report(info)
        }
    }));
    let (argv, notes) = args::llama_cpp_spellings(std::env::args_os());
    let cli = args::Cli::parse_from(argv);
    for note in notes {
        eprintln!("note: {note}");
    }
    // Output piped into a reader that stops early (`lowbit inspect F | head`) ends the process
    // quietly, as it does other command-line tools, instead of a panic in `println!`. Not for
    // `serve`, whose sockets must outlive any client.
    if !matches!(cli.command, args::Command::Serve(_)) {
        // SAFETY: as above: a disposition set before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// The most worker threads per core `--threads` accepts.
const MAX_THREADS_PER_CORE: usize = 8;

fn run(cli: args::Cli) -> anyhow::Result<()> {
    // An invalid LOWBIT_ISA is an error up front, not a silent fallback.
    lowbit_kernels::try_kernels()?;
    if cli.threads == Some(0) {
        anyhow::bail!("--threads must be at least 1");
    }
    // Thousands of workers (a typo, or a value meant for another tool) would take minutes to
    // start and then spin against each other: a few per core is the most that can help.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if let Some(n) = cli.threads.filter(|&n| n > MAX_THREADS_PER_CORE * cores) {
        anyhow::bail!("--threads {n} is more than {MAX_THREADS_PER_CORE} per core ({cores} cores here)");
    }
    // None lets rayon choose: RAYON_NUM_THREADS if set, else every core.
    let threads = cli.threads;
    match cli.command {
        args::Command::Convert(a) => global_pool(threads, || cmd::convert::run(a)),
        args::Command::Inspect(a) => cmd::inspect::run(a),
        args::Command::Verify(a) => cmd::inspect::verify(a),
        // These run in the model's own worker pool (`lowbit_runtime::Engine`).
        args::Command::Run(a) => cmd::run::run(a, threads),
        args::Command::Chat(a) => cmd::run::chat(a, threads),
        args::Command::Batch(a) => cmd::batch::run(a, threads),
        args::Command::Serve(a) => cmd::serve(a, threads),
        args::Command::Logits(a) => cmd::logits::run(a, threads),
        args::Command::Perplexity(a) => cmd::perplexity::run(a, threads),
        args::Command::Imatrix(a) => cmd::perplexity::imatrix(a, threads),
        args::Command::Cpu(a) => global_pool(threads, || cmd::cpu(a)),
        args::Command::Synth(a) => global_pool(threads, || cmd::synth(a)),
    }
}

/// Runs `f` on the global rayon pool of `threads` workers (the converter's pipeline blocks on
/// channels from the calling thread, so that thread must not be one of the workers).
fn global_pool(threads: Option<usize>, f: impl FnOnce() -> anyhow::Result<()>) -> anyhow::Result<()> {
    rayon::ThreadPoolBuilder::new().num_threads(threads.unwrap_or(0)).build_global()?;
    f()
}
