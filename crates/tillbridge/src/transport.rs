//! Where records live, and reading topics to their end outside any consumer group.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use tillbridge_core::config::Config;
use tillbridge_core::log::{BatchLimits, EmbeddedLog, KafkaLog, OutRecord, Record, Sink, Source};
use tokio_util::sync::CancellationToken;

/// How long a stage waits for records before it checks for shutdown or idleness.
pub(crate) const POLL_WAIT: Duration = Duration::from_millis(200);

/// A stage's batch limits (`[ingest]` batch size and bytes bound every stage's loop).
pub(crate) fn limits(config: &Config) -> BatchLimits {
    BatchLimits {
        max_records: config.ingest.batch_size,
        max_bytes: config.ingest.batch_bytes,
        wait: POLL_WAIT,
    }
}

/// Where records live.
#[derive(Clone, Debug)]
pub enum Transport {
    Embedded(EmbeddedLog),
    Kafka(KafkaLog),
}

impl Transport {
    pub fn from_config(config: &Config) -> anyhow::Result<Self> {
        Ok(match &config.kafka {
            Some(k) => Transport::Kafka(KafkaLog::new(k.clone())),
            None => {
                std::fs::create_dir_all(&config.embedded.path)
                    .with_context(|| format!("creating {}", config.embedded.path.display()))?;
                Transport::Embedded(EmbeddedLog::open(
                    &config.embedded.path,
                    config.embedded.partitions,
                )?)
            }
        })
    }

    /// Appends records (and waits until they are durable).
    pub async fn append(&self, records: Vec<OutRecord>) -> anyhow::Result<()> {
        match self {
            Transport::Embedded(log) => log.append(records).await?,
            Transport::Kafka(k) => {
                let sink = k.sink()?;
                sink.send(records).await?;
                sink.flush()?;
            }
        }
        Ok(())
    }
}

/// Reads topics from their beginning up to their end as it stands at the start, outside any
/// consumer group (the embedded log: from the beginning until no lag is left).
pub(crate) enum TableReader {
    Embedded(tillbridge_core::log::EmbeddedSource),
    Kafka {
        /// One reader per topic, with the end of each partition; read one after the other.
        topics: Vec<(tillbridge_core::log::KafkaSource, BTreeMap<i32, i64>)>,
        /// The next offset of each partition of the topic being read.
        next: BTreeMap<i32, i64>,
    },
}

impl TableReader {
    pub(crate) fn new(
        transport: &Transport,
        reader: &str,
        topics: &[String],
    ) -> anyhow::Result<Self> {
        Self::resuming(transport, reader, topics, &BTreeMap::new())
    }

    /// A reader that resumes each partition named in `from` (topic and partition to the next
    /// offset) on Kafka; the embedded log reads from the beginning.
    pub(crate) fn resuming(
        transport: &Transport,
        reader: &str,
        topics: &[String],
        from: &BTreeMap<(String, i32), i64>,
    ) -> anyhow::Result<Self> {
        Ok(match transport {
            Transport::Embedded(log) => {
                let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
                TableReader::Embedded(log.source_from(reader, &topics, true)?)
            }
            Transport::Kafka(k) => TableReader::Kafka {
                topics: topics
                    .iter()
                    .map(|t| {
                        let from = from
                            .iter()
                            .filter(|((topic, _), _)| topic == t)
                            .map(|((_, p), o)| (*p, *o))
                            .collect();
                        k.table_source_from(t, &from)
                    })
                    .collect::<Result<_, _>>()?,
                next: BTreeMap::new(),
            },
        })
    }

    /// The next batch (possibly empty), or `None` once every topic was read to its end.
    pub(crate) async fn next(
        &mut self,
        limits: BatchLimits,
    ) -> anyhow::Result<Option<Vec<Record>>> {
        match self {
            TableReader::Embedded(source) => {
                let batch = source.next_batch(limits).await?;
                Ok((!batch.is_empty() || source.lag() != Some(0)).then_some(batch))
            }
            TableReader::Kafka { topics, next } => loop {
                let Some((source, ends)) = topics.first_mut() else {
                    return Ok(None);
                };
                if ends
                    .iter()
                    .all(|(p, end)| next.get(p).copied().unwrap_or(0) >= *end)
                {
                    topics.remove(0);
                    next.clear();
                    continue;
                }
                let batch = source.next_batch(limits).await?;
                for r in &batch {
                    next.insert(r.partition, r.offset + 1);
                }
                return Ok(Some(batch));
            },
        }
    }
}

/// Every record of `topic` up to its end when called (outside any consumer group).
pub(crate) async fn read_to_end(
    transport: &Transport,
    topic: &str,
    limits: BatchLimits,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<Record>> {
    let mut reader = TableReader::new(
        transport,
        &format!("read-to-end.{topic}"),
        &[topic.to_owned()],
    )?;
    let mut all = Vec::new();
    loop {
        let batch = tokio::select! {
            _ = shutdown.cancelled() => break,
            b = reader.next(limits) => b?,
        };
        match batch {
            Some(batch) => all.extend(batch),
            None => break,
        }
    }
    Ok(all)
}
