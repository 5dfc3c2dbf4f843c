//! `dialmark-router`: parse arguments, load config, init tracing, hand over
//! to the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use dialmark_schemas::config::Config;

#[derive(Parser)]
#[command(name = "dialmark-router", version, about = "dialmark SIP routing node")]
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
    /// Run the routing node (the default).
    Serve,
    /// Validate the config file and exit.
    CheckConfig,
    /// Command a trunk of the node running with this config (its
    /// `router.http`, from the same machine): drain, resume, up, down,
    /// auto, priority=N, weight=N or reset. Audited in trunk_events.
    Trunk {
        /// The trunk's name.
        name: String,
        /// What to do.
        command: String,
        /// Who does it, for the audit trail (default: $USER).
        #[arg(long, env = "USER")]
        actor: String,
    },
}

// After a load peak glibc malloc kept the freed memory of 48,000 dialogs
// (219 MB RSS with none left, 9 MB before). jemalloc's background thread
// gives freed pages back to the system within seconds of the load's end
// (benches/README.md, "Router: sustained load").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

// One arena, not jemalloc's four per core: each arena keeps its own partly
// filled slabs and metadata after a load peak, and the router's few threads
// hardly contend for one (each has its cache). 90 s after 486,000 calls at
// 2,700 CPS, jemalloc held 21.8 MB with one arena vs 29.9 MB with eight, and
// 4.0 vs 4.8 MB before the load, 0 calls failed, 267 ms CPU per 1,000 calls
// (benches/README.md, "Router: sustained load"). `_RJEM_MALLOC_CONF` in the
// environment overrides it.
// Unsafe only in that two definitions of one symbol would be undefined:
// jemalloc declares this one weak, for the program to define.
#[allow(unsafe_code)]
#[export_name = "_rjem_malloc_conf"]
pub static MALLOC_CONF: &[u8; 10] = b"narenas:1\0";

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    dialmark_schemas::runtime::init_tracing();
    let cli = Cli::parse();
    let config =
        Config::load(&cli.config).with_context(|| format!("loading {}", cli.config.display()))?;
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            println!("{}: ok", cli.config.display());
            Ok(())
        }
        Command::Serve => dialmark_router::serve(config, Some(cli.config)).await,
        Command::Trunk {
            name,
            command,
            actor,
        } => {
            let mut at = config.router.http;
            if at.ip().is_unspecified() {
                at.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            let url = format!("http://{at}/trunks/{name}/{command}");
            let agent: ureq::Agent = ureq::Agent::config_builder()
                .http_status_as_error(false)
                .build()
                .into();
            let mut r = agent
                .post(&url)
                .query("actor", &actor)
                .send_empty()
                .with_context(|| format!("no router at {at} (router.http)"))?;
            let text = r.body_mut().read_to_string().unwrap_or_default();
            anyhow::ensure!(r.status().is_success(), "{}: {}", r.status(), text.trim());
            print!("{text}");
            Ok(())
        }
    }
}
