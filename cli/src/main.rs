//! `spoor`: the operator CLI. Parses flags (with `SPOOR_*` environment
//! fallbacks), calls `spoor_cli`, prints, and picks the exit code: 0 when
//! all is well, 1 when `reconcile` found a gap, 2 on any error.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use spoor_cli::dead_letters::{self, ReplayOptions, Selector};
use spoor_cli::debug;
use spoor_cli::{reconcile, window, ClickHouseOptions, ReconcileOptions};
use spoor_core::contract::DEFAULT_EVENTS_STREAM;

#[derive(Parser)]
#[command(
    name = "spoor",
    version,
    about = "Operate a Spoor pipeline: device debugging, dead letters, reconciliation and relays"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Look at what one device or user sent: `spoor debug device <id> --last 1h`.
    #[command(subcommand)]
    Debug(DebugCommand),
    /// Frames the relay could not decode, kept in the SPOOR_DEAD stream.
    #[command(subcommand)]
    DeadLetters(DeadLettersCommand),
    /// Prove accepted = inserted + deduped + dead-lettered for a time window.
    Reconcile(ReconcileArgs),
    /// The region's relays: the partitions each holds, lag, last insert.
    Relays(RelaysArgs),
}

#[derive(Args)]
struct RelaysArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// JetStream events stream whose relays to show.
    #[arg(long, env = "SPOOR_STREAM", default_value = DEFAULT_EVENTS_STREAM)]
    stream: String,
    /// The relays' --consumer (partition N is consumed by `<consumer>-pN`).
    #[arg(long, env = "SPOOR_CONSUMER", default_value = spoor_core::contract::DEFAULT_CONSUMER)]
    consumer: String,
    /// The relays' and the edge's PARTITIONS.
    #[arg(long, env = "SPOOR_PARTITIONS", default_value_t = spoor_core::contract::DEFAULT_PARTITIONS)]
    partitions: u32,
    #[arg(long)]
    json: bool,
}

#[derive(Subcommand)]
enum DeadLettersCommand {
    /// List dead letters: seq, time, reason, original subject, size, detail.
    List {
        #[command(flatten)]
        nats: NatsArgs,
        /// Only this reason (e.g. bad_magic, too_large, unsupported_version).
        #[arg(long)]
        reason: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Republish dead letters to their original subjects, then delete them.
    Replay {
        #[command(flatten)]
        nats: NatsArgs,
        /// Replay every dead letter with this reason (repeatable).
        #[arg(long)]
        reason: Vec<String>,
        /// Replay the dead letter with this SPOOR_DEAD sequence (repeatable).
        #[arg(long)]
        seq: Vec<u64>,
        /// Replay every dead letter.
        #[arg(long)]
        all: bool,
        /// Only say what would be replayed.
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DebugCommand {
    /// One device's events (or, with --user, a user's devices' events), with
    /// the path each took: edge, relay, ClickHouse.
    Device(DeviceArgs),
}

#[derive(Args)]
struct DeviceArgs {
    /// The device id (`anonymous_id`), or with --user the `user_id`.
    id: String,
    /// Treat the id as a user_id.
    #[arg(long)]
    user: bool,
    /// How far back, on the edge's receive time: what arrived in it (e.g.
    /// 15m, 1h, 6h; at most 24h).
    #[arg(long, default_value = "1h")]
    last: String,
    /// Only this project's events (needed to read ClickHouse).
    #[arg(long)]
    project: Option<String>,
    /// Most events to show (the newest).
    #[arg(long, default_value_t = 1_000)]
    limit: usize,
    /// Keep watching and print new events as they arrive.
    #[arg(long)]
    follow: bool,
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    nats: NatsArgs,
    /// JetStream events stream whose relays to ask.
    #[arg(long, env = "SPOOR_STREAM", default_value = DEFAULT_EVENTS_STREAM)]
    stream: String,
    /// How long to wait for the relays' answers.
    #[arg(long, default_value_t = 500)]
    timeout_ms: u64,
    /// ClickHouse HTTP URL, for events older than the rings.
    #[arg(long, env = "SPOOR_CLICKHOUSE_URL")]
    clickhouse_url: Option<String>,
    #[command(flatten)]
    clickhouse: ClickHouseAccess,
}

/// Which ClickHouse database, as whom (the URL differs per command).
#[derive(Args)]
struct ClickHouseAccess {
    #[arg(long, env = "SPOOR_CLICKHOUSE_DB", default_value = "spoor")]
    clickhouse_db: String,
    #[arg(long, env = "SPOOR_CLICKHOUSE_USER")]
    clickhouse_user: Option<String>,
    #[arg(long, env = "SPOOR_CLICKHOUSE_PASSWORD", hide_env_values = true)]
    clickhouse_password: Option<String>,
}

impl ClickHouseAccess {
    fn at(self, url: String) -> ClickHouseOptions {
        ClickHouseOptions {
            url,
            database: self.clickhouse_db,
            user: self.clickhouse_user,
            password: self.clickhouse_password,
        }
    }
}

/// NATS's URL, CA and the ops role's nkey: the relay's own flags
/// (`--nats-url`, `--nats-ca`, `--nats-nkey-file`, `SPOOR_NATS_NKEY_SEED`).
use spoor_runtime::nats::NatsArgs;

#[derive(Args)]
struct ReconcileArgs {
    #[command(flatten)]
    nats: NatsArgs,
    /// JetStream events stream.
    #[arg(long, env = "SPOOR_STREAM", default_value = DEFAULT_EVENTS_STREAM)]
    stream: String,
    /// ClickHouse HTTP URL.
    #[arg(
        long,
        env = "SPOOR_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    clickhouse_url: String,
    #[command(flatten)]
    clickhouse: ClickHouseAccess,
    /// Start of the window: RFC 3339, or a span back from now (15m, 2h, 1d).
    #[arg(long)]
    since: String,
    /// End of the window (default: now).
    #[arg(long)]
    until: Option<String>,
    /// Only this project's events.
    #[arg(long)]
    project: Option<String>,
    /// Also show this relay's counters (base URL, e.g. http://127.0.0.1:9100; repeatable).
    #[arg(long = "relay")]
    relays: Vec<String>,
    /// How many missing or duplicated ids to list.
    #[arg(long, default_value_t = 20)]
    list: usize,
    #[arg(long)]
    json: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("spoor: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Debug(DebugCommand::Device(args)) => {
            use spoor_core::debug::{parse_duration_ms, DeviceQuery, Subject};
            let last = parse_duration_ms(&args.last).context("--last")?;
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis() as i64;
            let subject = if args.user {
                Subject::User(args.id)
            } else {
                Subject::Device(args.id)
            };
            let query = DeviceQuery::new(subject, args.project, last, now, args.limit)?;
            let opts = debug::DebugOptions {
                nats: args.nats.endpoint()?,
                stream: args.stream,
                query,
                timeout: std::time::Duration::from_millis(args.timeout_ms),
                clickhouse: args.clickhouse_url.map(|url| args.clickhouse.at(url)),
            };
            if args.follow {
                if !args.json {
                    println!("{}", debug::TABLE_HEADER);
                }
                debug::follow(&opts, std::time::Duration::from_secs(1), |e| {
                    if args.json {
                        println!("{}", serde_json::to_string(e).unwrap_or_default());
                    } else {
                        println!("{}", debug::render_row(e));
                    }
                    true
                })
                .await?;
                return Ok(ExitCode::SUCCESS);
            }
            let result = debug::device(&opts).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&result)?);
            } else {
                print!("{}", debug::render(&result));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters(DeadLettersCommand::List { nats, reason, json }) => {
            let letters = dead_letters::list(&nats.endpoint()?, reason.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
            } else {
                print!("{}", dead_letters::render_list(&letters));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::DeadLetters(DeadLettersCommand::Replay {
            nats,
            reason,
            seq,
            all,
            dry_run,
            json,
        }) => {
            let mut selectors: Vec<Selector> = reason.into_iter().map(Selector::Reason).collect();
            selectors.extend(seq.into_iter().map(Selector::Seq));
            if all {
                selectors.push(Selector::All);
            }
            let replayed = dead_letters::replay(&ReplayOptions {
                nats: nats.endpoint()?,
                selectors,
                dry_run,
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&replayed)?);
            } else {
                print!("{}", dead_letters::render_replayed(&replayed, dry_run));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Relays(args) => {
            let client = spoor_cli::connect::nats(&args.nats.endpoint()?).await?;
            let report =
                spoor_cli::relays::relays(&client, &args.stream, &args.consumer, args.partitions)
                    .await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis() as i64;
                print!("{}", spoor_cli::relays::render(&report, now));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Reconcile(args) => {
            let now = time::OffsetDateTime::now_utc();
            let since = window::parse_time(&args.since, now).context("--since")?;
            let until = args
                .until
                .as_deref()
                .map(|u| window::parse_time(u, now))
                .transpose()
                .context("--until")?;
            let mut opts = ReconcileOptions::new(
                args.nats.endpoint()?,
                args.clickhouse.at(args.clickhouse_url),
                since,
            );
            opts.stream = args.stream;
            opts.until = until;
            opts.project = args.project;
            opts.relays = args.relays;
            let report = reconcile(&opts).await?;
            if args.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render(args.list));
            }
            Ok(if report.is_exact() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
