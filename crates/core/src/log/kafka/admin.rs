//! Topic administration: creating topics from their specifications and describing existing
//! ones (`tillbridge topics create` and `topics check`).

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;

use super::{create, kafka_err, settled_guarded, Guard, KafkaLog};
use crate::{Error, Result};

/// How a topic should be: partitions, replication factor (`None`: the cluster's default) and
/// topic-level configs (`cleanup.policy`, `retention.ms`, ...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: Option<i32>,
    pub configs: BTreeMap<String, String>,
}

/// How an existing topic is: its partitions, its smallest replica count over them, and its
/// topic-level configs as the cluster reports them (defaults included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicState {
    pub partitions: usize,
    pub replication: usize,
    pub configs: BTreeMap<String, String>,
}

const ADMIN_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaLog {
    /// Creates every topic of `specs` that does not exist; returns the names it created.
    pub async fn create_topic_specs(&self, specs: &[TopicSpec]) -> Result<Vec<String>> {
        let admin: AdminClient<Guard> = create(&self.base()?, Guard::default())?;
        let new: Vec<NewTopic<'_>> = specs
            .iter()
            .map(|s| {
                let replication = TopicReplication::Fixed(s.replication.unwrap_or(-1));
                s.configs.iter().fold(
                    NewTopic::new(&s.name, s.partitions, replication),
                    |t, (k, v)| t.set(k, v),
                )
            })
            .collect();
        let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
        let mut created = Vec::new();
        for r in admin.create_topics(&new, &opts).await.map_err(kafka_err)? {
            match r {
                Ok(t) => created.push(t),
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((t, code)) => {
                    return Err(Error::Kafka(format!("creating topic {t}: {code}")));
                }
            }
        }
        Ok(created)
    }

    /// The number of brokers in the cluster.
    pub fn broker_count(&self) -> Result<usize> {
        let c: BaseConsumer<Guard> = create(&self.base()?, Guard::default())?;
        let md = settled_guarded(c.context(), || c.fetch_metadata(None, ADMIN_TIMEOUT))?;
        Ok(md.brokers().len())
    }

    /// How each of `topics` is on the cluster (`None`: it does not exist).
    pub async fn describe_topics(&self, topics: &[&str]) -> Result<Vec<Option<TopicState>>> {
        let c: BaseConsumer<Guard> = create(&self.base()?, Guard::default())?;
        let md = settled_guarded(c.context(), || c.fetch_metadata(None, ADMIN_TIMEOUT))?;
        let admin: AdminClient<Guard> = create(&self.base()?, Guard::default())?;
        let opts = AdminOptions::new().request_timeout(Some(ADMIN_TIMEOUT));
        let mut states = Vec::with_capacity(topics.len());
        for topic in topics {
            let Some(t) = md
                .topics()
                .iter()
                .find(|t| t.name() == *topic && !t.partitions().is_empty())
            else {
                states.push(None);
                continue;
            };
            let replication = t
                .partitions()
                .iter()
                .map(|p| p.replicas().len())
                .min()
                .unwrap_or(0);
            let described = admin
                .describe_configs([&ResourceSpecifier::Topic(topic)], &opts)
                .await
                .map_err(kafka_err)?;
            let mut configs = BTreeMap::new();
            for r in described {
                let resource =
                    r.map_err(|code| Error::Kafka(format!("describing topic {topic}: {code}")))?;
                for e in resource.entries {
                    if let Some(v) = e.value {
                        configs.insert(e.name, v);
                    }
                }
            }
            states.push(Some(TopicState {
                partitions: t.partitions().len(),
                replication,
                configs,
            }));
        }
        Ok(states)
    }
}
