//! Table queries on a store with 100,000 operations: how long one page takes.
//!
//! `cargo bench --bench tables` (no root, no fleet). Each query runs 30 times
//! after a warm-up; the median and the slowest are printed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use linkops::store::Store;
use linkops::tables::{self, query::QueryRequest};
use linkops_reconcilers::operation::{HostResult, HostState, Operation, OperationState, Requester};
use linkops_reconcilers::script::ParamValue;
use serde_json::{Value, json};

const OPERATIONS: usize = 100_000;
const MACHINES: usize = 50;
const RUNS: usize = 30;

fn history(store: &Store) {
    let states = [
        OperationState::Succeeded,
        OperationState::Succeeded,
        OperationState::Succeeded,
        OperationState::Failed,
        OperationState::PartiallyFailed,
        OperationState::Stopped,
    ];
    for batch in 0..OPERATIONS / 10_000 {
        let operations: Vec<(Operation, Vec<HostResult>)> = (0..10_000)
            .map(|i| {
                let n = batch * 10_000 + i;
                let machines: Vec<String> = (0..3)
                    .map(|k| format!("web{}", (n + k * 17) % MACHINES))
                    .collect();
                let hosts = machines
                    .iter()
                    .map(|m| HostResult {
                        machine_id: m.clone(),
                        state: HostState::Succeeded,
                        started_at_ms: Some(n as i64),
                        finished_at_ms: Some(n as i64 + 900),
                        stdout_bytes: 1024,
                        stderr_bytes: 0,
                        certificate: None,
                    })
                    .collect();
                let operation = Operation {
                    id: 0,
                    script: format!("script-{}", n % 20),
                    params: BTreeMap::from([(
                        "version".to_owned(),
                        ParamValue::String(format!("1.{}", n % 7)),
                    )]),
                    machines,
                    requested_by: Requester::User { name: "ada".into() },
                    // A pseudo-random spread, so the rare states are scattered.
                    state: states[(n * 7919) % states.len()],
                    created_at_ms: 1_700_000_000_000 + n as i64 * 30_000,
                    finished_at_ms: Some(1_700_000_000_000 + n as i64 * 30_000 + 900),
                    rollout: None,
                    retry_of: None,
                    secrets: Vec::new(),
                };
                (operation, hosts)
            })
            .collect();
        store.import_operations(&operations).unwrap();
    }
}

fn time(store: &Store, name: &str, body: Value) {
    let request: QueryRequest = serde_json::from_value(body).unwrap();
    let page = tables::run(store, &request, &|_| true).unwrap();
    let mut times: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            let page = tables::run(store, &request, &|_| true).unwrap();
            std::hint::black_box(page.rows_json());
            started.elapsed()
        })
        .collect();
    times.sort();
    println!(
        "{name:<58} {:>4} rows  median {:>8.2} ms  max {:>8.2} ms{}",
        page.rows.len(),
        times[RUNS / 2].as_secs_f64() * 1e3,
        times[RUNS - 1].as_secs_f64() * 1e3,
        page.total
            .map_or(String::new(), |t| format!("  (total {t})")),
    );
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("bench.redb")).unwrap();
    let started = Instant::now();
    history(&store);
    println!(
        "store: {OPERATIONS} operations on {MACHINES} machines, written in {:.1} s\n",
        started.elapsed().as_secs_f64()
    );
    let newest = json!([{ "column": "id", "dir": "desc" }]);
    time(
        &store,
        "newest 50",
        json!({ "table": "operations", "sort": newest, "limit": 50 }),
    );
    time(
        &store,
        "state = failed, newest 50 (index)",
        json!({ "table": "operations", "filter": [{ "column": "state", "op": "eq", "value": "failed" }], "sort": newest, "limit": 50 }),
    );
    time(
        &store,
        "machine web7 + script-3, newest 50 (index)",
        json!({ "table": "operations", "filter": [
            { "column": "machines", "op": "contains", "value": "web7" },
            { "column": "script", "op": "eq", "value": "script-3" }], "sort": newest, "limit": 50 }),
    );
    time(
        &store,
        "state = stopped in a one-week window, oldest 50",
        json!({ "table": "operations", "filter": [
            { "column": "state", "op": "eq", "value": "stopped" },
            { "column": "created_at", "op": "ge", "value": "2023-12-01T00:00:00Z" },
            { "column": "created_at", "op": "lt", "value": "2023-12-08T00:00:00Z" }], "limit": 50 }),
    );
    let deep: QueryRequest = serde_json::from_value(
        json!({ "table": "operations", "sort": newest, "limit": 1000, "offset": 50_000 }),
    )
    .unwrap();
    let deep_page = tables::run(&store, &deep, &|_| true).unwrap();
    let cursor = deep_page.next_cursor.unwrap();
    time(
        &store,
        "newest 50 after a cursor 51,000 rows deep",
        json!({ "table": "operations", "sort": newest, "limit": 50, "cursor": cursor }),
    );
    time(
        &store,
        "hosts of one operation",
        json!({ "table": "operation_hosts", "filter": [{ "column": "operation_id", "op": "eq", "value": 77_777 }] }),
    );
    time(
        &store,
        "sorted by script then newest (reads every match)",
        json!({ "table": "operations", "filter": [{ "column": "state", "op": "eq", "value": "failed" }],
                "sort": [{ "column": "script" }, { "column": "id", "dir": "desc" }], "limit": 50 }),
    );
    time(
        &store,
        "full scan: requested_by = nobody (matches none)",
        json!({ "table": "operations", "filter": [{ "column": "requested_by", "op": "eq", "value": "nobody" }], "sort": newest, "limit": 50 }),
    );
}
