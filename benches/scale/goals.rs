//! The figures of the largest size beside the goals they answer (issue 35:
//! "close to the limit"), and the peer's figure where there is one.

use super::*;

/// A budget of daemon memory for 10,000 machines.
const BUDGET_KIB: u64 = 200 * 1024;
/// Most daemon CPU a routine check may cost.
const CPU_PER_CHECK: Duration = Duration::from_micros(300);
/// The bench's interval of a machine's and a state's checks (a tenth of jitter beside).
const STATE_INTERVAL: Duration = Duration::from_secs(60);

pub(super) fn print(row: &Row, replicas: Option<&replicas::ReplicaRow>) {
    let size = row.size;
    let mut goals = Goals::default();
    let pooled = &row.pooled;
    goals.add(
        "1. every machine's connection kept, idle",
        "< 200 MiB",
        format!(
            "{:.0} MiB ({:.0} KiB per machine)",
            mib(pooled.rss_kib),
            pooled.rss_kib as f64 / size as f64
        ),
        String::new(),
        Some(pooled.rss_kib < BUDGET_KIB),
    );
    let pssh = row.peers.pssh.as_ref();
    goals.add(
        "1. fan-out on kept connections",
        "≤ 0.1× parallel-ssh -p 200",
        format!("{:.1} s", pooled.fanout[1].as_secs_f64()),
        pssh.map_or("not run".into(), |run| {
            format!(
                "{:.1} s ({:.2}×)",
                run.took.as_secs_f64(),
                pooled.fanout[1].as_secs_f64() / run.took.as_secs_f64()
            )
        }),
        pssh.map(|run| pooled.fanout[1].as_secs_f64() <= 0.1 * run.took.as_secs_f64()),
    );
    for (sweep, pool) in [(&row.shipped, "256 pooled"), (pooled, "every one pooled")] {
        let per_check = sweep.per_check(size);
        goals.add(
            &format!("2. daemon CPU per check in a sweep, {pool}"),
            "≤ 0.3 ms",
            format!("{:.2} ms", per_check.as_secs_f64() * 1000.0),
            String::new(),
            Some(per_check <= CPU_PER_CHECK),
        );
    }
    goals.add(
        "3. warm fan-out on 50 real sshd",
        "≤ 1.2× the bare russh client",
        "cargo bench --bench fanout".into(),
        String::new(),
        None,
    );
    let state = &row.state;
    goals.add(
        "4. a state's machines counted after its sync",
        "≤ 1 s",
        format!("{:.2} s", state.counted.as_secs_f64()),
        String::new(),
        Some(state.counted <= Duration::from_secs(1)),
    );
    goals.add(
        "4. a state converged, each machine applied once",
        "applies = reachable machines",
        format!(
            "{:.1} s, {} applies for {} machines",
            state.converged.as_secs_f64(),
            state.applied.0,
            state.applied.1
        ),
        String::new(),
        Some(state.applied.0 as usize == state.applied.1),
    );
    goals.add(
        "4. a state's longest gap between two checks",
        "≤ interval + a tenth (66 s) + the check",
        format!(
            "{:.1} s (p99 {:.1} s)",
            state.gaps[2].as_secs_f64(),
            state.gaps[1].as_secs_f64()
        ),
        String::new(),
        Some(state.gaps[2] <= STATE_INTERVAL + STATE_INTERVAL / 10 + Duration::from_secs(1)),
    );
    let largest = state.rss_kib.iter().copied().max().unwrap_or_default();
    goals.add(
        "4. a state on every machine: CPU per check, RSS after each cycle",
        "RSS < 200 MiB, not creeping",
        format!(
            "{:.2} ms, {} MiB",
            state.cpu_per_check.as_secs_f64() * 1000.0,
            mib_each(&state.rss_kib)
        ),
        String::new(),
        Some(largest < BUDGET_KIB),
    );
    match replicas {
        Some(shared) => {
            let largest_rss = (shared.replicas.iter()).map(|(rss, _)| *rss).max();
            let seconds = |d: Option<Duration>| {
                d.map_or("not in time".into(), |d| {
                    format!("{:.1} s", d.as_secs_f64())
                })
            };
            goals.add(
                "5. three replicas on one PostgreSQL",
                "30,000 machines, each replica < 200 MiB",
                format!(
                    "{} machines: largest replica {:.0} MiB, longest gap {}, fan-out through one {:.1} s",
                    shared.size,
                    mib(largest_rss.unwrap_or_default()),
                    seconds(shared.gap),
                    shared.fanout.as_secs_f64()
                ),
                String::new(),
                Some(shared.size >= 30_000 && largest_rss.is_some_and(|rss| rss < BUDGET_KIB)),
            );
            goals.add(
                "5. a replica killed mid-sweep",
                "its share checked within one interval (66 s)",
                format!(
                    "every machine checked {} after the kill",
                    seconds(shared.all_checked_after_kill)
                ),
                String::new(),
                Some(
                    (shared.all_checked_after_kill)
                        .is_some_and(|d| d <= STATE_INTERVAL + STATE_INTERVAL / 10),
                ),
            );
        }
        None => goals.add(
            "5. three replicas on one PostgreSQL",
            "30,000 machines",
            "not run (SCALE_REPLICAS=0)".into(),
            String::new(),
            None,
        ),
    }
    goals.add(
        "6. the store bounded",
        "retention of every record",
        "the simulated day above".into(),
        String::new(),
        None,
    );
    goals.add(
        "7. the fleet's snapshot the console reads (rows)",
        "first render < 0.5 s (in Chromium: fleet-scale.test.mjs)",
        format!(
            "{:.0} ms, {:.1} MB",
            row.snapshot.rows.0.as_secs_f64() * 1000.0,
            row.snapshot.rows.1 as f64 / 1e6
        ),
        format!(
            "as views: {:.0} ms, {:.1} MB",
            row.snapshot.views.0.as_secs_f64() * 1000.0,
            row.snapshot.views.1 as f64 / 1e6
        ),
        None,
    );
    println!("\nGoals at {size} machines:\n");
    println!("| goal | target | measured | peer / beside | met |");
    println!("|---|---|---|---|---|");
    for line in goals.lines {
        println!("{line}");
    }
}

#[derive(Default)]
struct Goals {
    lines: Vec<String>,
}

impl Goals {
    fn add(&mut self, goal: &str, target: &str, measured: String, peer: String, met: Option<bool>) {
        let met = match met {
            Some(true) => "met",
            Some(false) => "**not met**",
            None => "—",
        };
        self.lines.push(format!(
            "| {goal} | {target} | {measured} | {peer} | {met} |"
        ));
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}
