//! The `tillbridge` command: parses arguments, sets up tracing, and calls the library.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tillbridge::{Stages, Transport};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc's allocator: a profile of ingest spent about 40% of its CPU in
/// glibc's malloc and free (docs/PERFORMANCE.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    version,
    about = "An event-sourced broker between POS fleets and a promotion and loyalty core"
)]
struct Cli {
    /// TOML configuration file (defaults apply without one; TILLBRIDGE_* variables override).
    #[arg(long, short, global = true, env = "TILLBRIDGE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
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
    /// Create every topic on the configured Kafka cluster.
    CreateTopics {
        #[arg(long, default_value_t = 4)]
        partitions: i32,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TILLBRIDGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(tillbridge::logging::EscapedStderr::new(ansi))
        .with_ansi(ansi)
        .init();
    let cli = Cli::parse();
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
            if let Some(addr) = metrics_addr {
                let bound = tillbridge::serve_metrics(addr, shutdown.clone()).await?;
                tracing::info!(%bound, "serving metrics");
            }
            let transport = Transport::from_config(&config)?;
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
        Command::CreateTopics { partitions } => {
            let Transport::Kafka(k) = Transport::from_config(&config)? else {
                anyhow::bail!("create-topics needs a [kafka] section");
            };
            let topics = tillbridge::all_topics(&config)?;
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            k.create_topics(&names, partitions).await?;
            // The changelog of ingest's state (compacted), which `run` would otherwise create.
            let changelog = tillbridge_core::log::changelog_topic(&k.group("ingest"));
            k.ensure_changelog(&changelog, partitions).await?;
            println!("topics ready");
        }
    }
    Ok(())
}
