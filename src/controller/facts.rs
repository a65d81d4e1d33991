//! Fact gathering, beside the machine reconciles rather than in them: a
//! machine's check hands its gathering over when its facts are due, and a
//! task of its own gathers them — at most `[facts] concurrency` at once — so
//! a slow package manager never holds one of the reconcile's slots.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use linkops_reconcilers::desired::DesiredState;
use linkops_reconcilers::facts::{self, CustomFact};
use linkops_reconcilers::machine::Machine;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::reconcile::Context;
use crate::store::{self, now_ms};

/// When each machine's facts are due and which are being gathered.
pub(super) struct FactGathering {
    /// `[facts] interval`; zero gathers none.
    interval: Duration,
    /// `[facts] concurrency`: gatherings under way at once.
    slots: Semaphore,
    /// When each machine's facts are next due (Unix ms), once known: a check
    /// reads the store for them only after a restart or when they are due.
    due: Mutex<HashMap<String, i64>>,
    /// Machines whose gathering is queued or under way: one at a time each.
    gathering: Mutex<HashSet<String>>,
    /// The gatherings' tasks, ended and awaited when the daemon stops
    /// ([`FactGathering::stop`]): none outlives it holding the store.
    tasks: TaskTracker,
    stopping: CancellationToken,
}

impl FactGathering {
    pub(super) fn new(interval: Duration, concurrency: usize) -> FactGathering {
        FactGathering {
            interval,
            slots: Semaphore::new(concurrency.max(1)),
            due: Mutex::default(),
            gathering: Mutex::default(),
            tasks: TaskTracker::new(),
            stopping: CancellationToken::new(),
        }
    }

    /// Ends the gatherings under way (a gathering cut short is done again
    /// after the restart: nothing of it was recorded) and waits for their tasks.
    pub(super) async fn stop(&self) {
        self.stopping.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }

    fn due_at(&self, machine_id: &str) -> Option<i64> {
        (self.due.lock().expect("never poisoned"))
            .get(machine_id)
            .copied()
    }

    fn set_due_at(&self, machine_id: &str, at_ms: i64) {
        (self.due.lock().expect("never poisoned")).insert(machine_id.to_owned(), at_ms);
    }
}

/// A machine's place in [`FactGathering::gathering`], given back however its
/// gathering ends.
struct Gathering {
    context: Context,
    machine_id: String,
}

impl Drop for Gathering {
    fn drop(&mut self) {
        (self.context.facts.gathering.lock().expect("never poisoned")).remove(&self.machine_id);
    }
}

impl Context {
    /// Starts gathering an enrolled machine's facts if they may be due (at
    /// once when it was `just_enrolled`) and none is under way; returns at once.
    pub(super) fn gather_facts_when_due(
        &self,
        desired: &Arc<DesiredState>,
        machine: &Machine,
        just_enrolled: bool,
    ) {
        if self.facts.interval.is_zero() || self.facts.stopping.is_cancelled() {
            return;
        }
        let later = (self.facts.due_at(&machine.id)).is_some_and(|due_at| now_ms() < due_at);
        if later && !just_enrolled {
            return;
        }
        let first =
            (self.facts.gathering.lock().expect("never poisoned")).insert(machine.id.clone());
        if !first {
            return;
        }
        let gathering = Gathering {
            context: self.clone(),
            machine_id: machine.id.clone(),
        };
        let (desired, machine) = (desired.clone(), machine.clone());
        let span = tracing::info_span!("gather_facts", machine = %machine.id);
        let stopping = self.facts.stopping.clone();
        let gathered = async move {
            let context = &gathering.context;
            let Ok(_slot) = context.facts.slots.acquire().await else {
                return;
            };
            if let Err(error) = context
                .gather_facts(&desired, &machine, just_enrolled)
                .await
            {
                tracing::warn!(%error, "cannot record facts");
            }
        };
        // Tracked, and ended when the daemon stops: none outlives it holding the store.
        self.facts.tasks.spawn(
            async move {
                tokio::select! {
                    () = stopping.cancelled() => {}
                    () = gathered => {}
                }
            }
            .instrument(span),
        );
    }

    /// Gathers `machine`'s facts — the built-in ones and each custom fact
    /// that targets it — if they are due, and records them, or why not.
    async fn gather_facts(
        &self,
        desired: &DesiredState,
        machine: &Machine,
        just_enrolled: bool,
    ) -> Result<(), store::Error> {
        let id = machine.id.clone();
        let last = self
            .store
            .run(move |store| store.machine_facts(&id))
            .await?;
        let now = now_ms();
        let interval = self.facts.interval;
        let left = facts::due(&machine.id, last.as_ref(), just_enrolled, interval, now);
        if !left.is_zero() {
            let left_ms = i64::try_from(left.as_millis()).unwrap_or(i64::MAX);
            self.facts
                .set_due_at(&machine.id, now.saturating_add(left_ms));
            return Ok(());
        }
        let builtin = (self.access.gather_facts(machine).await)
            .and_then(|output| facts::parse(&output, now_ms()));
        let at_ms = now_ms();
        match builtin {
            Ok(builtin) => {
                let mut custom = Vec::new();
                for fact in custom_facts_of(desired, machine) {
                    let output = self.access.gather_custom_fact(machine, fact).await;
                    custom.push((fact.name.clone(), output));
                }
                let gathered = facts::gathered(&machine.id, builtin, custom, last.as_ref(), at_ms);
                match &gathered.error {
                    None => {
                        tracing::debug!(machine = %machine.id, facts = gathered.facts.len(), "facts gathered")
                    }
                    Some(error) => {
                        tracing::warn!(machine = %machine.id, %error, "facts gathered, not all")
                    }
                }
                self.store
                    .run(move |store| store.record_facts(&gathered))
                    .await?;
            }
            Err(error) => {
                tracing::warn!(machine = %machine.id, %error, "cannot gather facts");
                let id = machine.id.clone();
                self.store
                    .run(move |store| store.record_facts_error(&id, &error, at_ms))
                    .await?;
            }
        }
        let interval_ms = i64::try_from(interval.as_millis()).unwrap_or(i64::MAX);
        self.facts
            .set_due_at(&machine.id, at_ms.saturating_add(interval_ms));
        Ok(())
    }
}

/// The custom facts gathered on `machine`: those that target it.
fn custom_facts_of<'a>(
    desired: &'a DesiredState,
    machine: &'a Machine,
) -> impl Iterator<Item = &'a CustomFact> {
    desired
        .custom_facts
        .values()
        .filter(move |fact| fact.targets.is_empty() || !fact.targets.select([machine]).is_empty())
}
