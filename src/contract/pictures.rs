//! The fleet's pictures: series and counts the daemon aggregates for the
//! console's charts (`GET /api/pictures/...`).

use std::collections::BTreeMap;

use linkops_reconcilers::picture::{Distribution, Durations, MachinePoint, Point, Span};
use serde::{Deserialize, Serialize};

/// Which span a picture covers.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PictureQuery {
    /// `day` (the default: hourly points) or `week`.
    #[serde(default)]
    #[param(value_type = Option<String>)]
    pub span: Span,
}

/// The fleet over a span, as the console draws it: a few hundred numbers
/// whatever the fleet's size.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct FleetPicture {
    pub span: Span,
    /// Machines the caller sees.
    pub machines: u32,
    /// Hourly: the mean number of machines `reachable`, `unreachable`,
    /// `unknown` (sampled by the leader every `[pictures] interval`). Only for
    /// callers who see the whole fleet (none otherwise).
    pub availability: Option<Vec<Point>>,
    /// Each declared state's machines by standing, hourly (whole fleet only).
    pub compliance: Vec<StateCompliance>,
    /// How long each script's operations took (operations on machines the caller sees).
    pub durations: Vec<Durations>,
    /// How many machines the caller sees have each OS, kernel, architecture,
    /// number of pending (security) updates, reboot flag.
    pub facts: Vec<Distribution>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateCompliance {
    pub state: String,
    /// Hourly: the mean number of its machines `in_sync`, `drifted`, `failed`, … .
    pub points: Vec<Point>,
}

/// One machine's reachability and SSH latency over a span, from its kept
/// health history.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MachinePicture {
    pub machine: String,
    pub span: Span,
    pub points: Vec<MachinePoint>,
}

/// A declared state's machines by tag (then by standing), for the states
/// grid at fleet size.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StateByTag {
    pub state: String,
    pub tags: BTreeMap<String, BTreeMap<String, u32>>,
}
