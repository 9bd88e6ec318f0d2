//! Readiness of the process's stages, for `/readyz`: a stage is ready once its loop has read
//! from its source (its state open, its preloads and restores done) and while no partition of
//! it is being restored.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};

static STAGES: LazyLock<Mutex<BTreeMap<String, Phase>>> = LazyLock::new(Default::default);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Starting,
    Running,
    Stopped,
}

fn set(stage: &str, phase: Phase) {
    // A poisoned lock only means a panic elsewhere mid-update of a plain map: keep going.
    let mut stages = STAGES.lock().unwrap_or_else(|p| p.into_inner());
    stages.insert(stage.to_owned(), phase);
}

/// `stage` is starting (opening its state, preloading tables, restoring): not ready yet.
pub fn starting(stage: &str) {
    set(stage, Phase::Starting);
}

/// `stage`'s loop has read from its source: ready, unless a restore is under way.
pub fn running(stage: &str) {
    set(stage, Phase::Running);
}

/// `stage` has stopped: the process is no longer ready.
pub fn stopped(stage: &str) {
    set(stage, Phase::Stopped);
}

/// Why the process is not ready; empty when it is. No stage registered is not ready.
pub fn not_ready() -> Vec<String> {
    let stages = STAGES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut reasons = Vec::new();
    if stages.is_empty() {
        reasons.push("no stage started yet".to_owned());
    }
    for (stage, phase) in stages {
        match phase {
            Phase::Starting => reasons.push(format!("{stage}: starting")),
            Phase::Stopped => reasons.push(format!("{stage}: stopped")),
            Phase::Running => {}
        }
    }
    for family in crate::metrics::REGISTRY.gather() {
        if family.name() != "tillbridge_restore_records_remaining" {
            continue;
        }
        for m in family.get_metric() {
            let remaining = m.get_gauge().get_value();
            if remaining > 0.0 {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value().to_owned())
                        .unwrap_or_default()
                };
                reasons.push(format!(
                    "{}: restoring {} partition {} ({remaining} records left)",
                    label("group"),
                    label("topic"),
                    label("partition")
                ));
            }
        }
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The reasons about this test's own stages and gauge (other tests of the crate run stages
    /// concurrently).
    fn mine() -> Vec<String> {
        not_ready()
            .into_iter()
            .filter(|r| r.starts_with("health-test") || r.starts_with("health.test"))
            .collect()
    }

    #[test]
    fn ready_only_when_every_stage_runs_and_nothing_restores() {
        starting("health-test-a");
        starting("health-test-b");
        running("health-test-a");
        assert_eq!(mine(), vec!["health-test-b: starting".to_owned()]);
        assert!(!not_ready().is_empty());
        running("health-test-b");
        assert!(mine().is_empty());
        let gauge =
            crate::metrics::RESTORE_REMAINING.with_label_values(&["health.test", "cl", "3"]);
        gauge.set(42);
        assert_eq!(
            mine(),
            vec!["health.test: restoring cl partition 3 (42 records left)".to_owned()]
        );
        gauge.set(0);
        stopped("health-test-a");
        assert_eq!(mine(), vec!["health-test-a: stopped".to_owned()]);
    }
}
