//! The `sluice` command line. Everything it does lives in the library.

use clap::{Parser, Subcommand};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use sluice::commands::exec::{run_command, RunCommand};
use sluice::commands::replay::{self, ProgressStyle, ReplayOptions};
use sluice::commands::{self, limit_malloc_arenas};
use sluice::topology::{Config, Stopped};

/// sluice: collects line-delimited JSON events, enriches them with release
/// and process metadata, derives SLI metrics and fans them out.
///
/// With no config, `app | sluice` reads stdin and writes enriched NDJSON to
/// stdout.
#[derive(Parser, Debug)]
#[command(name = "sluice", version, about, long_about)]
struct Cli {
    /// Config file (TOML, or YAML by extension). Without one, the embedded
    /// default: stdin to stdout.
    #[arg(short, long, env = "SLUICE_CONFIG", global = true)]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check a config and report every error with its key path.
    Validate,
    /// Print a sample of the events leaving a source, transform or route
    /// output (`split.errors`) of the sluice running with this config, over
    /// its API: up to `--limit` events, or what came within 10 s.
    Tap {
        /// The output to look at.
        output: String,
        /// Most events to print (at most 1000).
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
    /// Run the config's `[[tests]]`: input lines through its transforms,
    /// checked against the events expected at each output. Exit 0 when
    /// every case passes, 1 otherwise.
    Test,
    /// Backfill existing files (plain or gzip) through the config's sinks,
    /// once, then exit: 0 when every line was delivered, 1 otherwise. The
    /// config's sources are ignored.
    Replay {
        /// Send only to these sinks (repeatable); all of them by default.
        #[arg(long = "sink", value_name = "NAME")]
        sinks: Vec<String>,
        /// No progress display, only the final summary.
        #[arg(short, long)]
        quiet: bool,
        /// The files to replay, in order.
        #[arg(required = true, value_name = "PATHS")]
        paths: Vec<PathBuf>,
    },
    /// Run a command with its log router attached: its stdout and stderr
    /// become events with process metadata, sent to the config's sinks
    /// (stdout by default). SIGTERM and SIGINT are forwarded to it; sluice
    /// exits with its exit code.
    Run {
        /// `process.type` of its events (web, worker, clock).
        #[arg(long, env = "SLUICE_PROCESS_TYPE")]
        process_type: Option<String>,
        /// Join each output stream's stack traces into one event with this
        /// multiline preset.
        #[arg(long, env = "SLUICE_MULTILINE", value_parser = ["auto", "java", "python", "go", "node", "ruby", "dotnet"])]
        multiline: Option<String>,
        /// The command and its arguments, after `--`.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
        command: Vec<String>,
    },
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let cli = Cli::parse();
    init_logging();
    let config = match &cli.config {
        Some(path) => Config::load(path),
        None => Config::default_pipe(),
    };
    let config = match config {
        Ok(c) => c,
        Err(errors) => {
            let source = cli
                .config
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "embedded default".into());
            eprintln!("sluice: invalid config ({source}), {} error(s):", errors.0.len());
            for e in &errors.0 {
                eprintln!("  {e}");
            }
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Tap { output, limit }) = &cli.command {
        return tap(&config, output, *limit);
    }
    if let Some(Command::Test) = cli.command {
        let (report, passed) = config.run_tests();
        print!("{report}");
        return if passed { ExitCode::SUCCESS } else { ExitCode::FAILURE };
    }
    if let Some(Command::Validate) = cli.command {
        println!(
            "config is valid: {} source(s), {} sink(s)",
            config.sources.len(),
            config.sinks.len()
        );
        return ExitCode::SUCCESS;
    }
    let replay = match &cli.command {
        Some(Command::Replay { sinks, quiet, paths }) => {
            if cli.config.is_none() {
                eprintln!("sluice replay: --config is required (the sinks to send to come from it)");
                return ExitCode::from(2);
            }
            let progress = if *quiet {
                ProgressStyle::Quiet
            } else if std::io::stderr().is_terminal() {
                ProgressStyle::Bar
            } else {
                ProgressStyle::Lines
            };
            Some(ReplayOptions {
                paths: paths.clone(),
                sinks: sinks.clone(),
                progress,
            })
        }
        _ => None,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-worker")
        .max_blocking_threads(64)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(opts) = replay {
        let result = runtime.block_on(replay::replay(config, opts));
        runtime.shutdown_background();
        return match result {
            Ok(report) => {
                eprintln!("{report}");
                if report.all_delivered() {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                }
            }
            Err(e) => {
                eprintln!("sluice replay: {e}");
                ExitCode::from(2)
            }
        };
    }
    if let Some(Command::Run {
        process_type,
        multiline,
        command,
    }) = cli.command
    {
        let outcome = runtime.block_on(run_command(
            config,
            cli.config.clone(),
            RunCommand {
                command,
                process_type,
                multiline,
            },
        ));
        runtime.shutdown_background();
        if let Err(e) = &outcome.pipeline {
            tracing::error!(error = %e, "the log pipeline stopped with an error");
        }
        return ExitCode::from(outcome.exit_code());
    }
    let result = runtime.block_on(commands::run(config, cli.config.clone()));
    // Blocking threads may still sit in a read on a terminal; do not wait.
    runtime.shutdown_background();
    match result {
        Ok(Stopped::InputEnded | Stopped::Signal) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sluice stopped with an error");
            ExitCode::FAILURE
        }
    }
}

/// `sluice tap`: asks the running sluice's API for a sample of `output`.
fn tap(config: &Config, output: &str, limit: usize) -> ExitCode {
    let Some(url) = config.tap_url(output, limit) else {
        eprintln!("sluice tap: the config disables the API (api.enabled = false); tap works through it");
        return ExitCode::from(2);
    };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice tap: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let answer = runtime.block_on(async {
        let resp = reqwest::get(&url).await?;
        let status = resp.status();
        Ok::<_, reqwest::Error>((status, resp.bytes().await?))
    });
    match answer {
        Ok((status, body)) if status.is_success() => {
            use std::io::Write;
            let _ = std::io::stdout().write_all(&body);
            ExitCode::SUCCESS
        }
        Ok((status, body)) => {
            eprintln!("sluice tap: {url} answered {status}: {}", String::from_utf8_lossy(&body).trim());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("sluice tap: cannot reach {url}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Structured logs on stderr (JSON, or human text on a terminal); level from
/// `SLUICE_LOG` (default `info`). Never on stdout: that is the event stream.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if std::io::stderr().is_terminal() {
        builder.init();
    } else {
        builder.json().flatten_event(true).with_current_span(false).init();
    }
}
