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
    /// Run a report of schemas/reports/ (campaigns, missed_calls, ...).
    Report {
        name: String,
        /// Start, UTC (YYYY-MM-DD or "YYYY-MM-DD hh:mm:ss"), inclusive.
        #[arg(long)]
        from: String,
        /// End, UTC, exclusive.
        #[arg(long)]
        to: String,
        /// Site id; every site when omitted.
        #[arg(long, default_value = "")]
        site: String,
        /// table, csv, tsv or json (one object per line).
        #[arg(long, default_value = "table")]
        format: String,
        /// Conversion name of google_ads_export.
        #[arg(long, default_value = "")]
        conversion: String,
        /// Demand window of pool_health in seconds (the busy quarter-hour).
        #[arg(long, default_value_t = dialmark_schemas::reports::DEFAULT_WINDOW_SECONDS)]
        window: u32,
        /// Cool-down pool_health's advisor assumes; tracker.cooldown_seconds
        /// of the config when omitted.
        #[arg(long)]
        cooldown: Option<u32>,
        /// google_ads_export: only calls talked at least this many seconds
        /// (the conversion action's threshold).
        #[arg(long, default_value_t = 0)]
        min_talk: u32,
        /// yandex_export: CallTrackerURL prefix; the call id is appended.
        #[arg(long, default_value = "")]
        call_url: String,
    },
    /// Inventory operations (the same as the admin API), straight on Redis.
    Admin {
        #[command(subcommand)]
        op: AdminOp,
    },
}

#[derive(Subcommand)]
enum AdminOp {
    /// Load sites, pools and numbers from an inventory TOML file (idempotent).
    Apply { file: PathBuf },
    /// Add numbers to a pool, as static numbers (--source-label), or to stock.
    AddNumbers {
        #[arg(long)]
        pool: Option<String>,
        #[arg(long)]
        site: Option<String>,
        #[arg(long)]
        source_label: Option<String>,
        #[arg(long = "destination")]
        destinations: Vec<String>,
        #[arg(required = true)]
        numbers: Vec<String>,
    },
    /// Replace where a number's calls ring.
    SetDestinations {
        number: String,
        #[arg(required = true)]
        destinations: Vec<String>,
    },
    /// Retire a number to quarantine.
    Retire {
        number: String,
        #[arg(long, default_value = "retired")]
        reason: String,
    },
    /// Show a number's routing record.
    Show { number: String },
    /// List quarantined numbers with the calls each received while in
    /// quarantine (trailing 90 days) and when it may be released.
    Quarantine,
    /// Return eligible quarantined numbers to stock ([tracker.quarantine]:
    /// by default >= 90 days, < 3 calls while in quarantine in 90 days).
    ReleaseQuarantine {
        /// Only list what would be released.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show a pool's size, free, leased and exhausted counts.
    PoolStats { pool: String },
}

// A visit allocates and frees a few hundred small objects on two worker
// threads; glibc malloc spent a fifth of the tracker's CPU on them under
// load (benches/README.md, "Tracker"), mimalloc far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
        Command::Migrate => {
            let report = dialmark_tracker::migrate(&config).await?;
            println!(
                "migrations applied: {:?}, already present: {:?}",
                report.applied, report.skipped
            );
            Ok(())
        }
        Command::Serve => dialmark_tracker::serve(config).await,
        Command::Admin { op } => admin(config, op).await,
        Command::Report {
            name,
            from,
            to,
            site,
            format,
            conversion,
            window,
            cooldown,
            min_talk,
            call_url,
        } => {
            let params = dialmark_schemas::reports::Params {
                from,
                to,
                site,
                conversion,
                window_seconds: window,
                cooldown_seconds: cooldown.unwrap_or(config.tracker.cooldown_seconds),
                min_talk_seconds: min_talk,
                call_url,
            };
            dialmark_tracker::report::run(
                &config,
                &name,
                &params,
                &format,
                &mut tokio::io::stdout(),
            )
            .await
        }
    }
}

async fn admin(config: Config, op: AdminOp) -> anyhow::Result<()> {
    use dialmark_tracker::{admin, inventory::AddNumbers, pool};
    // Admin commands run after the services migrated ClickHouse.
    let (state, sinks) = dialmark_tracker::app::AppState::new(
        config,
        None,
        "tracker-cli",
        dialmark_schemas::sink::SchemaGate::open(),
    )
    .await?;
    let inv = state.inventory.clone();
    let now = dialmark_schemas::unix_now();
    let out = match op {
        AdminOp::Apply { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let parsed: admin::InventoryFile =
                toml::from_str(&text).with_context(|| format!("parsing {}", file.display()))?;
            admin::apply(&inv, parsed, now).await?
        }
        AdminOp::AddNumbers {
            pool,
            site,
            source_label,
            destinations,
            numbers,
        } => {
            let req = AddNumbers {
                numbers,
                pool,
                site,
                source_label,
                destinations,
                trunk_group: None,
            };
            format!(
                "added {}",
                inv.add_numbers(req, "cli", now).await?.join(" ")
            )
        }
        AdminOp::SetDestinations {
            number,
            destinations,
        } => admin::route_json(&inv.set_destinations(&number, &destinations).await?).to_string(),
        AdminOp::Retire { number, reason } => {
            admin::route_json(&inv.retire(&number, &reason, "cli", now).await?).to_string()
        }
        AdminOp::Show { number } => {
            let n = inv.plan.normalize(&number)?;
            match inv.route(&n).await? {
                Some(r) => admin::route_json(&r).to_string(),
                None => anyhow::bail!("unknown number {n}"),
            }
        }
        AdminOp::Quarantine => serde_json::to_string_pretty(&inv.quarantine(now).await?)?,
        AdminOp::ReleaseQuarantine { dry_run } => {
            serde_json::to_string_pretty(&inv.release_quarantine("cli", now, dry_run).await?)?
        }
        AdminOp::PoolStats { pool: id } => {
            let mut r = inv.redis.clone();
            serde_json::to_string(&pool::stats(&mut r, &id).await?)?
        }
    };
    println!("{out}");
    drop(inv);
    drop(state);
    for t in sinks.0 {
        let _ = t.await;
    }
    Ok(())
}
