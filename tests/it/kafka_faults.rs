//! Fault injection with librdkafka's mock cluster: broker errors and a
//! broker restart during a run. The pipeline rides them out (retrying with
//! backoff) and still commits every record exactly once.

use crate::harness::*;
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use sluice::config::PipelineConfig;
use sluice::pipeline::{Event, Pipeline, Stopped};

fn ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("id-{i:04}")).collect()
}

fn assert_each_id_once(dir: &std::path::Path, ids: &[String]) {
    for table in ["events", "audit"] {
        let counts = read_delta(&dir.join("tables").join(table), "fan-out").counts("id");
        assert_eq!(counts, ids.iter().map(|id| (id.clone(), 1)).collect(), "table {table}");
    }
}

#[test]
fn fetch_errors_from_the_broker_are_ridden_out() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 2, 1).unwrap();
    let ids = ids(200);
    produce(&cluster.bootstrap_servers(), "events", 2, &ids);
    // Every kind of answer a broker gives while leadership moves.
    cluster.request_errors(
        RDKafkaApiKey::Fetch,
        &[
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
            RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let config = PipelineConfig::load(&fan_out_config(dir.path(), &cluster.bootstrap_servers(), "events", 30, "")).unwrap();
    let summary = Pipeline::open(config, "pipeline.toml").unwrap().run(|_| {}).unwrap();
    assert_eq!((summary.stopped, summary.records), (Stopped::CaughtUp, 200));
    assert_each_id_once(dir.path(), &ids);
}

#[test]
fn a_broker_restart_between_batches_is_retried_and_nothing_is_lost() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("events", 2, 1).unwrap();
    let ids = ids(100);
    produce(&cluster.bootstrap_servers(), "events", 2, &ids);
    let dir = tempfile::tempdir().unwrap();
    let path = fan_out_config(dir.path(), &cluster.bootstrap_servers(), "events", 30, "max_attempts = 10");
    let text = std::fs::read_to_string(&path).unwrap().replace("fetch_timeout_ms = 20000", "fetch_timeout_ms = 500");
    std::fs::write(&path, text).unwrap();
    let mut pipeline = Pipeline::open(PipelineConfig::load(&path).unwrap(), "pipeline.toml").unwrap();

    // The broker goes down after the pipeline connected; it comes back when
    // the pipeline reports its first failed attempt.
    cluster.broker_down(1).unwrap();
    let mut retries = Vec::new();
    let mut committed = Vec::new();
    let summary = pipeline
        .run(|event| match event {
            Event::Retrying { error, .. } => {
                if retries.is_empty() {
                    cluster.broker_up(1).unwrap();
                }
                retries.push(error.clone());
            }
            Event::Committed(r) => committed.push(r.batch_id),
            Event::Healed { .. } => panic!("no table lost a batch"),
            Event::Quarantined { .. } => panic!("nothing is quarantined here"),
            Event::Maintained { .. } => {}
        })
        .unwrap();
    assert!(!retries.is_empty(), "the outage was noticed");
    assert!(retries[0].starts_with("kafka: low watermarks: "), "the first failure is planning's: {retries:?}");
    assert_eq!(summary.stopped, Stopped::CaughtUp);
    assert_eq!(committed, (0..4).collect::<Vec<_>>(), "batch ids stay dense");
    assert_each_id_once(dir.path(), &ids);
}
