use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod doctor;

/// LTX-Video image-to-video inference server for small GPUs.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP server.
    Serve(ltx_server::ServeConfig),
    /// Report libtorch, CUDA, devices, NVRTC and kernel compilation on this machine.
    Doctor {
        /// Print the report as JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("LTX_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match Cli::parse().command {
        Command::Serve(config) => {
            tokio::runtime::Runtime::new()?.block_on(ltx_server::serve(config))?
        }
        Command::Doctor { json } => doctor::run(json)?,
    }
    Ok(())
}
