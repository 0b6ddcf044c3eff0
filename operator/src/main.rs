use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use dragonfly_operator::{certs, crd_manage, crdgen, manifests, preheat, run, uninstall};

#[derive(Parser)]
#[command(
    name = "dragonfly-operator",
    version,
    about = "Operator for the Dragonfly P2P distribution system"
)]
struct Cli {
    /// Log as JSON lines (for log collectors) instead of text.
    #[arg(long, global = true, env = "LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Run(run::RunArgs),
    /// Print the CustomResourceDefinitions as YAML, write them to files, or
    /// apply them to the cluster.
    Crd {
        /// Write one file per CRD (`<plural>.yaml`) into this directory instead.
        #[arg(long, conflicts_with = "apply")]
        out_dir: Option<PathBuf>,
        /// Server-side apply them to the cluster instead (field manager
        /// dragonfly-operator, forced; created where missing, left alone
        /// where a newer operator applied them), wait until each is
        /// Established and print one line per CRD (Helm pre-install and
        /// pre-upgrade hook).
        #[arg(long)]
        apply: bool,
        /// With --apply: fail unless every CRD is Established within this
        /// many seconds.
        #[arg(long, default_value_t = 60, requires = "apply")]
        timeout_seconds: u64,
    },
    /// Write the `kubectl apply -f` install manifests into a directory.
    Manifests {
        #[arg(long, default_value = "manifests")]
        out_dir: PathBuf,
        #[arg(long, default_value = manifests::NAMESPACE)]
        namespace: String,
        /// Operator image (default: dragonfly-p2p/dragonfly-operator:<version>).
        #[arg(long)]
        image: Option<String>,
    },
    /// Delete every DragonflyCluster in a namespace and wait until the operator
    /// restored the nodes and released them (Helm pre-delete hook).
    Uninstall(uninstall::UninstallArgs),
    /// Run one Preheat against dfdaemons named on the command line, without
    /// Kubernetes; prints the final status as JSON and fails unless it succeeded.
    PreheatLocal(preheat::local::LocalArgs),
    /// Issue a cluster CA, or a member certificate signed by it, in the
    /// --tls-dir layout (ca.crt, tls.crt, tls.key).
    Certs(certs::CertsArgs),
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable line chain, no backtrace: this is what an operator sees in `kubectl logs`.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Crd {
            apply: true,
            timeout_seconds,
            ..
        } => {
            init_tracing(cli.log_json);
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(crd_manage::establish::run(Duration::from_secs(
                timeout_seconds,
            )))?;
        }
        Command::Crd { out_dir: None, .. } => print!("{}", crdgen::crds_yaml()?),
        Command::Crd {
            out_dir: Some(dir), ..
        } => {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            for (name, text) in crdgen::crd_files()? {
                let path = dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        Command::Manifests {
            out_dir,
            namespace,
            image,
        } => {
            let mut opts = manifests::Options {
                namespace,
                ..manifests::Options::default()
            };
            if let Some(image) = image {
                opts.image = image;
            }
            std::fs::create_dir_all(&out_dir)
                .with_context(|| format!("cannot create {}", out_dir.display()))?;
            for (name, text) in manifests::render(&opts)? {
                let path = out_dir.join(name);
                std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?;
            }
        }
        Command::Run(args) => {
            init_tracing(cli.log_json);
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(run::run(args))?;
        }
        Command::Uninstall(args) => {
            init_tracing(cli.log_json);
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            rt.block_on(uninstall::uninstall(args))?;
        }
        Command::Certs(args) => certs::run(args)?,
        Command::PreheatLocal(args) => {
            init_tracing(cli.log_json);
            let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
            let st = rt.block_on(preheat::local::run(args))?;
            println!("{}", preheat::local::report(&st));
            if !preheat::local::succeeded(&st) {
                anyhow::bail!("preheat {:?}: {}", st.phase, st.message);
            }
        }
    }
    Ok(())
}
