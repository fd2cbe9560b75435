//! `ferry-broker`: runs a Ferry broker until SIGINT or SIGTERM.
//!
//! Startup: parse flags, load and validate the config, set up logging (stderr), build the tokio runtime,
//! open the broker (data-directory lock, metadata store, metrics endpoint), then wait for a signal and shut down.
//! A startup failure prints one line, `ferry-broker: error: ...`, and exits with status 1;
//! a clean shutdown exits with status 0. A panic in any thread is logged and aborts the process:
//! everything durable is recovered from disk on the next start, which is safer than running on with a dead task.

use std::io::IsTerminal;
use std::num::NonZeroUsize;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use ferry_broker::config::{Args, LogFormat};
use ferry_broker::{Broker, Config};
use tokio::signal::unix::{SignalKind, signal};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// Threads for blocking work (RocksDB calls, file I/O); work beyond it waits in tokio's queue.
const BLOCKING_THREADS_MAX: usize = 64;

/// Allocations of at least this many bytes get their own memory mapping from glibc's allocator, returned to the
/// system as soon as they are freed.
const MALLOC_MMAP_THRESHOLD_BYTES: libc::c_int = 256 * 1024;

fn main() -> ExitCode {
    pin_malloc_mmap_threshold();
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ferry-broker: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Pins glibc's mmap threshold at [`MALLOC_MMAP_THRESHOLD_BYTES`]. By default glibc raises the threshold to the size
/// of the largest mapped block freed (up to 32 MiB): after the first maximal request frame (8 MiB) is freed, later
/// frames and fetch responses come from its heaps, whose freed memory per thread arena mostly stays resident. A burst
/// of large frames from hostile clients then left the resident set far above what the request budget allows
/// (the hostile suite measured 78 MiB with a 16 MiB budget on a 28 MiB baseline; 39 MiB with the threshold pinned).
/// Called first thing, before any thread exists. A no-op on other C libraries.
fn pin_malloc_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt(3) only sets an allocator parameter; it is called before any other thread is started.
        #[allow(unsafe_code)]
        let set = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD_BYTES) };
        // mallopt returns 1 on success; on failure the allocator keeps its defaults, which only costs memory.
        debug_assert_eq!(set, 1, "mallopt(M_MMAP_THRESHOLD) is supported by glibc");
    }
}

fn run(args: &Args) -> anyhow::Result<()> {
    let config = Config::load(args)?;
    config.validate()?;
    init_tracing(config.log_format)?;
    install_panic_hook();

    let worker_threads = std::thread::available_parallelism().map_or(2, NonZeroUsize::get);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(worker_threads)
        .max_blocking_threads(BLOCKING_THREADS_MAX)
        .thread_name("ferry-worker")
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?;
    tracing::debug!(worker_threads, blocking_threads_max = BLOCKING_THREADS_MAX, "runtime started");
    // Every key in effect (defaults, file and flags merged), as `ferry broker info` shows them: the first thing to
    // read in a log when a broker behaves unexpectedly.
    let in_effect = config.to_pairs().iter().map(|(key, value)| format!("{key}={value}")).collect::<Vec<_>>().join(" ");
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %in_effect, "configuration in effect");

    runtime.block_on(async {
        let broker = Broker::open(config).await?;
        // Registered before announcing readiness, so a signal sent after the "started" line is never the default
        // (process-killing) action.
        let mut terminate = signal(SignalKind::terminate()).context("cannot install the SIGTERM handler")?;
        let mut interrupt = signal(SignalKind::interrupt()).context("cannot install the SIGINT handler")?;
        tracing::info!(version = env!("CARGO_PKG_VERSION"), "broker started");
        let signal_name = tokio::select! {
            _ = terminate.recv() => "SIGTERM",
            _ = interrupt.recv() => "SIGINT",
        };
        tracing::info!("received {signal_name}; shutting down");
        broker.shutdown().await?;
        tracing::info!("broker stopped");
        Ok(())
    })
}

/// Logs to stderr, as text or JSON lines, filtered by `RUST_LOG` (default `info`).
fn init_tracing(log_format: LogFormat) -> anyhow::Result<()> {
    // The parse error's message already includes its causes; formatting it once keeps the error to one line.
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .from_env()
        .map_err(|error| anyhow::anyhow!("invalid RUST_LOG filter: {error}"))?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let installed = match log_format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    installed.map_err(|error| anyhow::anyhow!(error)).context("cannot set up logging")
}

/// Logs a panic, lets the default hook print it (and the backtrace, if enabled), then aborts the process,
/// so that a panicking task or thread can never leave the broker running without it.
/// Release builds also set `panic = "abort"`; this covers debug builds, whose panics would otherwise unwind.
fn install_panic_hook() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        tracing::error!(thread = thread.name().unwrap_or("unnamed"), "panic: {info}; aborting");
        default_hook(info);
        std::process::abort();
    }));
}
