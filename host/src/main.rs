//! The `herald` binary: `herald serve`, `herald check-config FILE`, `herald default-config`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::{Config, EMBEDDED_DEFAULT, Source};
use herald::logging::{LogConfig, LogFormat};

/// Herald: a real-time push server (Centrifugo client protocol and server API).
///
/// Every configuration key can be overridden by an environment variable named HERALD_<SECTION>__<KEY>,
/// for example HERALD_HTTP_API__KEY=secret or HERALD_CLIENT__PING_INTERVAL=10s; other HERALD_* variables
/// (such as those Kubernetes sets for a Service named herald) are ignored. The log level is `log.level`
/// (default "info") unless RUST_LOG is set; text logs are in colour only on a terminal and without NO_COLOR.
#[derive(Debug, Parser)]
#[command(name = "herald", version)]
struct Cli {
    /// Log format, overriding the configuration's `log.format`: text for people, json (one object per
    /// line) for a log collector.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM.
    Serve {
        /// TOML configuration file; without it the embedded default is used (see `herald default-config`).
        /// Its Pusher apps are reloaded when it changes or on SIGHUP.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Listen address, overriding the configuration's `address` (e.g. 0.0.0.0:8000).
        #[arg(long)]
        address: Option<std::net::SocketAddr>,
    },
    /// Validate a configuration file (with environment overrides applied) and report what is wrong, by key.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print the embedded default configuration.
    DefaultConfig,
    /// Work with plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Validate a plugin offline: compile it, check it fits the plugin contract, read its metadata and run
    /// its `init` with the configuration in `<file>.toml` beside it (or --config).
    Check {
        /// The `.wasm` component.
        file: PathBuf,
        /// The plugin's configuration as a TOML file (default: `<file>.toml` beside the plugin, if any).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stderr_is_terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // `serve` logs as its configuration says, so logging starts once that is loaded; everything else (and
    // a configuration that does not load) logs with the defaults.
    let loaded = match &cli.command {
        Command::Serve { config, .. } => Some(Config::load(
            config.as_deref().map_or(Source::Embedded, Source::File),
        )),
        _ => None,
    };
    let mut log = match &loaded {
        Some(Ok(config)) => config.log.clone(),
        _ => LogConfig::default(),
    };
    if let Some(format) = cli.log_format {
        log.format = format;
    }
    herald::logging::install(&log, stderr_is_terminal);
    Config::log_ignored_environment();
    match cli.command {
        Command::DefaultConfig => {
            print!("{EMBEDDED_DEFAULT}");
            ExitCode::SUCCESS
        }
        Command::Plugin(PluginCommand::Check { file, config }) => {
            match check_plugin(&file, config.as_deref()) {
                Ok(description) => {
                    println!("{description}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("{}: rejected: {error}", file.display());
                    ExitCode::FAILURE
                }
            }
        }
        Command::CheckConfig { file } => match Config::load(Source::File(&file)) {
            Ok(config) => {
                for warning in config.warnings() {
                    println!("warning: {warning}");
                }
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("{}: invalid configuration\n{error}", file.display());
                ExitCode::FAILURE
            }
        },
        Command::Serve {
            address,
            config: file,
            ..
        } => {
            let mut config = match loaded.expect("loaded for serve") {
                Ok(config) => config,
                Err(error) => {
                    tracing::error!("invalid configuration\n{error}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(address) = address {
                config.address = address;
                // Some rules depend on the address (the admin page needs a password off loopback).
                if let Err(error) = config.validate() {
                    tracing::error!("invalid configuration with --address {address}\n{error}");
                    return ExitCode::FAILURE;
                }
            }
            raise_open_file_limit();
            match serve(config, file) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Raises the soft limit on open files to the hard limit: every connection is a file descriptor, and the
/// usual soft limit (1024) would cap the server far below `limits.max_connections`.
fn raise_open_file_limit() {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => tracing::info!(limit, "open-file limit raised to the hard limit"),
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

#[tokio::main]
async fn check_plugin(
    file: &std::path::Path,
    config: Option<&std::path::Path>,
) -> Result<String, herald::plugin::LoadError> {
    let config = config.map(herald::plugin::read_config).transpose()?;
    herald::plugin::check(file, config).await
}

#[tokio::main]
async fn serve(config: Config, file: Option<PathBuf>) -> anyhow::Result<()> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let address = config.address;
    let api_on = config.http_api.insecure || !config.http_api.key.is_empty();
    let node = herald::server::start(config).await?;
    if let Some(file) = file {
        herald::reload::watch(node.clone(), file.clone())
            .map_err(|e| anyhow::anyhow!("cannot watch {}: {e}", file.display()))?;
    }
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
    tracing::info!(%address, version = herald::node::VERSION, "herald listening (websocket at /connection/websocket)");
    if !api_on {
        tracing::warn!(
            "server API is off: set http_api.key (e.g. HERALD_HTTP_API__KEY) to enable /api"
        );
    }
    for app in node.pusher.all().iter() {
        let app = app.config();
        tracing::info!(
            app_id = %app.id,
            webhooks = app.webhooks.len(),
            enabled = app.enabled,
            "pusher app: clients on /app/{}, its HTTP API on /apps/{}",
            app.key,
            app.id
        );
    }
    herald::server::run(node, listener, herald::server::shutdown_signal()).await?;
    tracing::info!("herald stopped");
    Ok(())
}
