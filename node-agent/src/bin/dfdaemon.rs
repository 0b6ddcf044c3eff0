//! dfdaemon: registry mirror, piece server and content cache of one node.

use clap::{Parser, Subcommand};
use node_agent::cli::RunArgs;

#[derive(Parser)]
#[command(
    name = "dfdaemon",
    version,
    about = "P2P node agent: piece server, downloader and content cache"
)]
#[command(args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run(Box<RunArgs>),
    /// Point containerd at the mirror (apply), undo it (restore), or report
    /// containerd settings that bypass it (check).
    Containerd(node_agent::containerd::ContainerdArgs),
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("DFDAEMON_LOG_FORMAT").is_ok_and(|f| f == "json");
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    init_tracing();
    if !node_agent::allocator::return_large_buffers_to_the_system() {
        tracing::debug!("malloc's mmap threshold left as it is");
    }
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Run(args)) => *args,
        Some(Command::Containerd(args)) => {
            return match node_agent::containerd::run_cli(args) {
                Ok(code) => std::process::ExitCode::from(code),
                Err(e) => {
                    eprintln!("dfdaemon containerd: {e}");
                    std::process::ExitCode::from(2)
                }
            };
        }
        None => cli.run,
    };
    let config = match args.into_config() {
        Ok(config) => config,
        Err(e) => {
            eprintln!("dfdaemon: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    match node_agent::run(config, shutdown_signal(), |_| {}).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dfdaemon: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
