//! `redisgate`: Redis over HTTP, speaking the Upstash REST protocol.
//!
//! # Layout
//! One file: clap subcommands that load the configuration and call into `redisgate-server`.
#![forbid(unsafe_code)]

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use redisgate_server::config::{self, Settings};

// The hot path allocates a few small buffers per request from many threads; glibc's malloc
// spent ~10 % of the gateway's CPU there (arena locks included) in profiles, mimalloc less.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "redisgate", version, about = "Redis over HTTP, speaking the Upstash REST protocol")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API.
    Serve {
        /// TOML configuration file (environment variables still win over it).
        #[arg(long, short, env = "REDISGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Address to listen on, e.g. 127.0.0.1:8080 (wins over file and environment).
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Log as JSON lines instead of text.
        #[arg(long, env = "REDISGATE_LOG_JSON")]
        log_json: bool,
    },
    /// Check the configuration, the metadata store and every Redis; exits 1 if any is down.
    Check {
        /// TOML configuration file (environment variables still win over it).
        #[arg(long, short, env = "REDISGATE_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Configuration helpers.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print a commented example configuration.
    Default,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Config { command: ConfigCommand::Default } => {
            print!("{}", config::EXAMPLE);
            Ok(())
        }
        Command::Check { config } => {
            let env: std::collections::HashMap<String, String> = std::env::vars().collect();
            let settings = match Settings::load(config.as_deref(), &env) {
                Ok(s) => s,
                Err(e) => {
                    println!("FAIL  config: {e}");
                    std::process::exit(1);
                }
            };
            let source =
                config.map_or_else(|| "defaults and environment".to_owned(), |p| p.display().to_string());
            let lines = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(redisgate_server::check::run(&settings, &source));
            lines.iter().for_each(|l| println!("{l}"));
            if lines.iter().any(|l| l.result.is_err()) {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Serve { config, listen, log_json } => {
            // The log, and OpenTelemetry export when OTEL_EXPORTER_OTLP_ENDPOINT is set.
            let telemetry = redisgate_server::ops::telemetry::init(log_json)?;
            let env: std::collections::HashMap<String, String> = std::env::vars().collect();
            let mut settings = Settings::load(config.as_deref(), &env)?;
            if let Some(addr) = listen {
                settings.listen = addr;
            }
            let served =
                tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(settings));
            // The last spans (the exporter has its own runtime, so this works after ours).
            telemetry.shutdown();
            served
        }
    }
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    eprintln!("RedisGate serving on http://{addr}/ (API docs: http://{addr}/docs)");
    if settings.tokens.is_empty() {
        eprintln!(
            "Create the first user (it administers this deployment):\n  \
             curl -X POST http://{addr}/auth/register -H 'content-type: application/json' \\\n    \
             -d '{{\"email\":\"you@example.com\",\"password\":\"a long passphrase\"}}'"
        );
    } else {
        eprintln!(
            "Standalone mode: the Upstash REST API for {} token(s) at http://{addr}/",
            settings.tokens.len()
        );
    }
    redisgate_server::launch(settings, listener, shutdown_signal()).await
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutdown signal received");
}
