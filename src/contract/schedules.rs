//! Schedules as the API shows them: what Git declares, when each fires next
//! (in its zone), and what became of its fires.

use linkops_reconcilers::schedule::{FireRecord, Schedule};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleView {
    pub schedule: Schedule,
    /// Its next fire (none: suspended, past its `until`).
    #[schema(value_type = Option<String>, format = DateTime)]
    pub next_fire: Option<jiff::Timestamp>,
    /// The next fire as the schedule's zone reads it, e.g. `2027-03-28 03:00 CEST`.
    pub next_fire_in_zone: Option<String>,
    /// Why its fire due now waits: a suspension holding what it targets, or
    /// the maintenance windows of the state it applies.
    pub held: Option<String>,
    /// Its latest fire: started, missed or skipped.
    pub last_fire: Option<FireRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ScheduleDetail {
    #[serde(flatten)]
    pub view: ScheduleView,
    /// Its fires, newest first (the latest 50).
    pub fires: Vec<FireRecord>,
}
