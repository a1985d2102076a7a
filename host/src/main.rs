//! The `herald` binary: `herald serve`, `herald check-config FILE`, `herald default-config`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use herald::config::{Config, EMBEDDED_DEFAULT, Source};
use herald::node::Node;
use tracing_subscriber::EnvFilter;

/// Herald: a real-time push server (Centrifugo client protocol and server API).
///
/// Every configuration key can be overridden by an environment variable named HERALD_<SECTION>__<KEY>,
/// for example HERALD_HTTP_API__KEY=secret or HERALD_CLIENT__PING_INTERVAL=10s. Logging follows RUST_LOG
/// (default "info").
#[derive(Debug, Parser)]
#[command(name = "herald", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server until SIGINT or SIGTERM.
    Serve {
        /// TOML configuration file; without it the embedded default is used (see `herald default-config`).
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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::DefaultConfig => {
            print!("{EMBEDDED_DEFAULT}");
            ExitCode::SUCCESS
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
        Command::Serve { config, address } => {
            let source = config.as_deref().map_or(Source::Embedded, Source::File);
            let mut config = match Config::load(source) {
                Ok(config) => config,
                Err(error) => {
                    eprintln!("invalid configuration\n{error}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(address) = address {
                config.address = address;
            }
            match serve(config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[tokio::main]
async fn serve(config: Config) -> anyhow::Result<()> {
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    let address = config.address;
    let api_on = config.http_api.insecure || !config.http_api.key.is_empty();
    let node = Node::start(config).await?;
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {address}: {e}"))?;
    tracing::info!(%address, version = herald::node::VERSION, "herald listening (websocket at /connection/websocket)");
    if !api_on {
        tracing::warn!(
            "server API is off: set http_api.key (e.g. HERALD_HTTP_API__KEY) to enable /api"
        );
    }
    herald::server::run(node, listener, herald::server::shutdown_signal()).await?;
    tracing::info!("herald stopped");
    Ok(())
}
