//! The `tillbridge` command: parses arguments, sets up tracing, and calls the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use tillbridge::{Stages, Transport};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's allocator: a profile of ingest spent about 40% of its CPU in
/// glibc's malloc and free (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(about = "An event-sourced broker between POS fleets and a promotion and loyalty core")]
struct Cli {
    /// TOML configuration file (defaults apply without one; TILLBRIDGE_* variables override).
    #[arg(long, short, global = true, env = "TILLBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as text (escaped, one a line) or as JSON objects (one a line). The level is
    /// `TILLBRIDGE_LOG` (`info` for `run`, `warn` otherwise).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TILLBRIDGE_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the pipeline: on Kafka when `[kafka]` is configured, else on the embedded log.
    Run {
        /// Stages to run, comma separated (`delivery` runs only when `[delivery]` is set).
        #[arg(
            long,
            default_value = "ingest,delivery,reconciler,fraud-guard",
            value_delimiter = ','
        )]
        stages: Vec<String>,
        /// Stop once every input is consumed (embedded log only).
        #[arg(long)]
        until_idle: bool,
        /// Serve Prometheus metrics on this address (for example 127.0.0.1:9464).
        #[arg(long)]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    /// Check JSON-lines events against the contract and append the good ones to `till.events`.
    Publish {
        /// File of JSON lines: contract messages, or record envelopes (key, ts, headers, payload)
        /// as kcat -J writes them; `-` or none reads standard input.
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// Topic to append to, whatever the lines' envelopes say (default: the envelope's topic,
        /// else the configured till events topic).
        #[arg(long)]
        topic: Option<String>,
        /// Only check; append nothing.
        #[arg(long)]
        check: bool,
    },
    /// Run a simulated POS fleet through every stage and write a reconciliation report.
    Demo {
        /// Seed of the simulator; the same seed gives the same results.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Where the report is written.
        #[arg(long, default_value = "tillbridge-demo")]
        out: PathBuf,
        /// Also print every fraud alert with its evidence.
        #[arg(long)]
        alerts: bool,
    },
    /// Write the reconciliation report (JSON, CSV, HTML).
    Report {
        /// Output directory.
        #[arg(long, default_value = "reports")]
        out: PathBuf,
        /// What the report is built from: `topics` (the default with [kafka]: the whole
        /// deployment's report, while `run` is up, from any machine) or `state` (this
        /// process's reconciler state; the default on the embedded log).
        #[arg(long, value_enum)]
        from: Option<tillbridge::ReportFrom>,
    },
    /// Create the deployment's topics on the configured Kafka cluster, or check existing ones.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Same as `topics create` (the former name).
    #[command(hide = true)]
    CreateTopics {
        #[command(flatten)]
        args: CreateArgs,
    },
    /// Check the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a topic's records decoded, one a line, card numbers masked.
    ///
    /// The dead letters, alerts, compensations, sessions or till events, from the beginning, on
    /// Kafka or on the embedded log (stop `run` first: the embedded log takes one process at a
    /// time). A record that does not decode prints an UNDECODABLE line with its position.
    Tail {
        /// `dlq`, `alerts`, `compensations`, `sessions`, `events`, or the configured name of one
        /// of these topics.
        topic: String,
        /// Keep printing records as they arrive, until Ctrl-C or SIGTERM (Kafka only).
        #[arg(long, short)]
        follow: bool,
        /// `text` for people; `json`: one object a line, stable field names, money in minor
        /// units (what `dlq replay --file` reads back).
        #[arg(long, value_enum, default_value_t = tillbridge::tail::Format::Text)]
        format: tillbridge::tail::Format,
        /// Only the last N records (by record time) of what is there at the start.
        #[arg(long, short = 'n', value_name = "N")]
        limit: Option<usize>,
    },
    /// Dead letters: publish again the ones an operator has fixed.
    #[command(subcommand)]
    Dlq(DlqCommand),
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Publish fixed dead letters again to the topic they came from.
    ///
    /// Each goes with its original key and payload and a `tillbridge-replayed-from: <dead letter
    /// id>` header. Without --file: the letters on the DLQ as they are (the cause was fixed
    /// elsewhere: a store added, `max_clock_skew` raised). With --file: letters as `tail dlq
    /// --format json` wrote them, payloads (`original`, or `original_base64`) edited. OVERSIZED
    /// (truncated) and CARD_DATA (redacted) letters are skipped unless --file gives them a new
    /// payload. Replaying twice is safe: ingest drops an identical resend of an accepted event
    /// by its event id.
    Replay {
        /// Only letters with this reason (repeat, or comma separated), e.g. CLOCK_SKEW.
        #[arg(long = "reason", value_name = "REASON", value_delimiter = ',')]
        reasons: Vec<String>,
        /// JSON lines of `tillbridge tail dlq --format json`, edited; `-` reads standard input.
        #[arg(long, short)]
        file: Option<PathBuf>,
        /// Say what would be published; publish nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Subcommand, Debug)]
enum TopicsCommand {
    /// Create every topic that does not exist: partitions, replication factor, compaction for
    /// the tables and ingest's changelog, retention covering the dedup window and the
    /// settlement horizon for the others. Existing topics are left alone.
    Create {
        #[command(flatten)]
        args: CreateArgs,
    },
    /// Report how existing topics differ from what `create` would make (missing topics, cleanup
    /// policy, too short a retention, too few replicas, a changelog with fewer partitions than
    /// its input); exits with status 1 when any does.
    Check {
        /// Replicas each topic should have (default: the smaller of 3 and the broker count).
        #[arg(long)]
        replication_factor: Option<i32>,
    },
}

#[derive(clap::Args, Debug)]
struct CreateArgs {
    /// Partitions of each topic (instances share work by partition: at least as many as the
    /// instances you will run).
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Replicas of each topic (default: the smaller of 3 and the broker count).
    #[arg(long)]
    replication_factor: Option<i32>,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Check a configuration file and the TILLBRIDGE_* variables: print every problem at once
    /// (exit status 1 when there is one); ignored variables are warnings.
    Check,
}

/// Sets up logging: `TILLBRIDGE_LOG` filters (default `default_level`), text lines escaped
/// (`logging.rs`) or JSON objects, on standard error.
fn init_logging(format: LogFormat, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TILLBRIDGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    match format {
        LogFormat::Text => {
            let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
            tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(tillbridge::logging::EscapedStderr::new(ansi))
                .with_ansi(ansi)
                .init();
        }
        // JSON escapes control characters itself.
        LogFormat::Json => tracing_subscriber::fmt()
            .json()
            .with_current_span(true)
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .init(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let build = tillbridge::BuildInfo::get();
    let version: &'static str = Box::leak(build.to_string().into_boxed_str());
    let matches = Cli::command().version(version).get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `run` says what it does (starts, restores, progress while catching up); the one-shot
    // commands print their results and only warnings besides.
    let level = match cli.command {
        Command::Run { .. } => "info,sled=warn",
        _ => "warn",
    };
    init_logging(cli.log_format, level);
    if let Command::Config(ConfigCommand::Check) = cli.command {
        let check = tillbridge::check_config(cli.config.as_deref());
        for w in &check.warnings {
            println!("warning: {w}");
        }
        for e in &check.errors {
            println!("error: {e}");
        }
        if !check.errors.is_empty() {
            std::process::exit(1);
        }
        println!("configuration OK");
        return Ok(());
    }
    let config = tillbridge::load_config(cli.config.as_deref()).context("loading configuration")?;
    let shutdown = CancellationToken::new();
    tillbridge::signals::on_signals(shutdown.clone(), tillbridge::signals::DRAIN_TIMEOUT)
        .context("listening for SIGTERM and SIGINT")?;
    match cli.command {
        Command::Run {
            stages,
            until_idle,
            metrics_addr,
        } => {
            let stages = Stages::parse(&stages)?;
            let transport = Transport::from_config(&config)?;
            tracing::info!(
                version = build.version,
                git = build.git,
                "tillbridge starting"
            );
            if let Some(addr) = metrics_addr {
                build.export();
                let broker = match &transport {
                    Transport::Kafka(k) => Some(k.clone()),
                    Transport::Embedded(_) => None,
                };
                let bound = tillbridge::serve_metrics(addr, broker, shutdown.clone()).await?;
                tracing::info!(%bound, "serving /metrics, /healthz and /readyz");
            }
            let summary =
                tillbridge::run(&config, &transport, stages, until_idle, shutdown).await?;
            println!("{summary}");
        }
        Command::Publish { file, topic, check } => {
            // A check needs no log, so it works while `run` holds the embedded one.
            let transport = if check {
                None
            } else {
                Some(Transport::from_config(&config)?)
            };
            let input: Box<dyn std::io::BufRead> = match file {
                Some(f) if f.as_os_str() != "-" => Box::new(std::io::BufReader::new(
                    std::fs::File::open(&f).with_context(|| format!("opening {}", f.display()))?,
                )),
                _ => Box::new(std::io::BufReader::new(std::io::stdin())),
            };
            let report = tillbridge::publish::publish(
                input,
                transport.as_ref(),
                &config.topics,
                &config.ingest,
                topic.as_deref(),
                check,
            )
            .await?;
            print!("{report}");
            if report.rejected() > 0 {
                std::process::exit(1);
            }
        }
        Command::Demo { seed, out, alerts } => {
            let summary = tillbridge::demo::run(seed, &out, shutdown).await?;
            println!("{summary}");
            if alerts {
                for line in &summary.alert_lines {
                    println!("{line}");
                }
            }
        }
        Command::Report { out, from } => {
            let from = from.unwrap_or(if config.kafka.is_some() {
                tillbridge::ReportFrom::Topics
            } else {
                tillbridge::ReportFrom::State
            });
            let files = tillbridge::write_report_from(&config, &out, from, &shutdown).await?;
            for f in files {
                println!("wrote {}", f.display());
            }
        }
        Command::Topics(TopicsCommand::Create { args }) | Command::CreateTopics { args } => {
            let k = kafka(&config)?;
            let created =
                tillbridge::topics::create(&config, &k, args.partitions, args.replication_factor)
                    .await?;
            for t in &created {
                println!("created {t}");
            }
            println!("topics ready ({} created)", created.len());
        }
        Command::Topics(TopicsCommand::Check { replication_factor }) => {
            let drift =
                tillbridge::topics::check(&config, &kafka(&config)?, replication_factor).await?;
            for line in &drift {
                println!("{line}");
            }
            if !drift.is_empty() {
                std::process::exit(1);
            }
            println!("topics match the configuration");
        }
        Command::Tail {
            topic,
            follow,
            format,
            limit,
        } => {
            let transport = Transport::from_config(&config)?;
            let opts = tillbridge::tail::TailOptions {
                topic,
                follow,
                format,
                limit,
            };
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            tillbridge::tail::tail(&config, &transport, &opts, &mut out, &shutdown).await?;
        }
        Command::Dlq(DlqCommand::Replay {
            reasons,
            file,
            dry_run,
        }) => {
            // A dry run from a file needs no log, so it works while `run` holds the embedded one.
            let transport = if dry_run && file.is_some() {
                None
            } else {
                Some(Transport::from_config(&config)?)
            };
            let opts = tillbridge::dlq::ReplayOptions {
                reasons,
                file,
                dry_run,
            };
            let report =
                tillbridge::dlq::replay(&config, transport.as_ref(), &opts, &shutdown).await?;
            print!("{report}");
            if report.bad_lines > 0 {
                std::process::exit(1);
            }
        }
        Command::Config(ConfigCommand::Check) => unreachable!("handled before loading"),
    }
    Ok(())
}

/// The configured Kafka cluster, for the commands that only make sense on one.
fn kafka(
    config: &tillbridge_core::config::Config,
) -> anyhow::Result<tillbridge_core::log::KafkaLog> {
    match Transport::from_config(config)? {
        Transport::Kafka(k) => Ok(k),
        Transport::Embedded(_) => anyhow::bail!("this command needs a [kafka] section"),
    }
}
