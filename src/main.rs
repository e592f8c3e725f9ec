use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

mod bench;
mod bench_cards;
mod bench_faces;
mod bench_http;
mod bench_offload;
mod bench_soak;
mod doctor;
mod faces;
mod generate;
mod generate_flows;
mod instantid_cli;

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
    Serve(Box<ltx_server::ServeConfig>),
    /// Generate one video from an image and a prompt, written as an MP4.
    Generate(Box<generate::GenerateArgs>),
    /// Generate one InstantID portrait from a face photo and a prompt, written as a PNG.
    Instantid(Box<instantid_cli::InstantIdArgs>),
    /// Benchmarks against baselines measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Check face models and photos for InstantID: every face found, the one InstantID uses.
    Faces(Box<faces::FacesArgs>),
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
            tokio::runtime::Runtime::new()?.block_on(ltx_server::serve(*config))?
        }
        Command::Generate(args) => generate::run(*args)?,
        Command::Instantid(args) => instantid_cli::run(*args)?,
        Command::Bench(cmd) => bench::run(cmd)?,
        Command::Faces(args) => faces::run(*args)?,
        Command::Doctor { json } => doctor::run(json)?,
    }
    Ok(())
}
