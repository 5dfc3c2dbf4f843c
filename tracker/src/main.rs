//! `dialmark-tracker`: parse arguments, load config, init tracing, hand over
//! to the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dialmark_schemas::config::Config;

#[derive(Parser)]
#[command(
    name = "dialmark-tracker",
    version,
    about = "dialmark tracker: snippet API, number pools, admin"
)]
struct Cli {
    /// Config file (TOML).
    #[arg(
        long,
        short,
        env = "DIALMARK_CONFIG",
        default_value = "ops/dialmark.example.toml"
    )]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the HTTP service (the default).
    Serve,
    /// Apply pending ClickHouse migrations and exit.
    Migrate,
    /// Validate the config file and exit.
    CheckConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let cli = Cli::parse();
    let config =
        Config::load(&cli.config).with_context(|| format!("loading {}", cli.config.display()))?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{}: ok", cli.config.display());
            Ok(())
        }
        Command::Migrate => {
            let report = dialmark_tracker::migrate(&config).await?;
            println!(
                "migrations applied: {:?}, already present: {:?}",
                report.applied, report.skipped
            );
            Ok(())
        }
        Command::Serve => dialmark_tracker::serve(config).await,
    }
}
