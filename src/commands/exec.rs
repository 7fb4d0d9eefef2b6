//! `sluice run -- CMD ARGS`: the command's stdout and stderr replace the
//! config's sources (a `process` source named `app`), and every sink
//! receives them. sluice exits with the command's exit code.

use std::path::PathBuf;

use crate::config::{ConfigError, ConfigErrors};
use crate::multiline::MultilineConfig;
use crate::sources::process::{CommandExit, ProcessConfig, RUN_SOURCE_NAME};
use crate::sources::SourceConfig;
use crate::topology::{self, Config, RunError, RunOptions, Stopped};

/// What `sluice run` should do.
#[derive(Debug, Clone)]
pub struct RunCommand {
    /// The program and its arguments.
    pub command: Vec<String>,
    /// `--process-type`.
    pub process_type: Option<String>,
    /// `--multiline`: a preset that joins each output stream's stack
    /// traces (see docs/multiline.md).
    pub multiline: Option<String>,
}

/// How `sluice run` ended.
#[derive(Debug)]
pub struct RunOutcome {
    /// How the command ended, if it was started.
    pub(crate) exit: Option<CommandExit>,
    /// How the pipeline ended.
    pub pipeline: Result<Stopped, RunError>,
}

impl RunOutcome {
    /// The exit code for `sluice run`: the command's (the pipeline's error,
    /// if any, is logged), or 1 when the command's end is unknown.
    pub fn exit_code(&self) -> u8 {
        match self.exit {
            Some(e) => e.code(),
            None => 1,
        }
    }
}

/// Runs `command` with the config's sinks: its stdout and stderr replace
/// the config's sources, and every sink receives them. With the config's
/// path, a reload re-reads it and applies the same replacement, so the
/// command keeps running while sinks change.
pub async fn run_command(config: Config, path: Option<PathBuf>, run: RunCommand) -> RunOutcome {
    let process_type = run.process_type.or_else(|| config.enrich.process_type.clone());
    let mut source = ProcessConfig::new(run.command, process_type);
    source.multiline = run.multiline.as_deref().map(MultilineConfig::preset);
    let exit = source.exit.clone();
    let enrich = config.enrich.clone();
    let config = with_command(config, &source);
    let reloader = path.map(|p| {
        Box::new(move || {
            let new = Config::load(&p)?;
            if new.enrich != enrich {
                // Every source restarts on new metadata, and this one would
                // run the command a second time.
                return Err(ConfigErrors(vec![ConfigError::new(
                    "enrich",
                    "cannot change while `sluice run` runs its command; restart it to apply",
                )]));
            }
            Ok(with_command(new, &source))
        }) as topology::Reloader
    });
    let pipeline = topology::run(config, RunOptions { reloader, source: None }).await;
    RunOutcome {
        exit: exit.get(),
        pipeline,
    }
}

/// `config` with the command as its only source, feeding every sink.
fn with_command(mut config: Config, source: &ProcessConfig) -> Config {
    config.sources.clear();
    config
        .sources
        .insert(RUN_SOURCE_NAME.to_owned(), SourceConfig::Process(Box::new(source.clone())));
    for sink in config.sinks.values_mut() {
        sink.inputs = None;
    }
    config
}
