//! The admin's circuit controls (an admin key, or a dashboard session with its
//! CSRF proof, see [`crate::auth`]):
//!
//! - `GET /v1/admin/circuits`: the same list as `GET /v1/circuits` (which
//!   takes a client key), for the dashboard;
//! - `POST /v1/admin/circuits/{upstream}/force-open`: open it until it is
//!   forced closed or reset (requests to that upstream fail fast, fallbacks
//!   answer);
//! - `POST /v1/admin/circuits/{upstream}/force-closed`: close it and keep it
//!   closed whatever fails, until reset;
//! - `POST /v1/admin/circuits/{upstream}/reset`: a fresh closed circuit
//!   (forced state, failure counts and re-trips cleared).
//!
//! Each answers the circuit's new entry (as in `/v1/circuits`); an unknown
//! upstream is a 404 `circuit_not_found`. Every action is logged on
//! `llm_proxy::audit` with the admin key id.
//!
//! With `[state] redis_url`, the library's circuit sync keeps forced states
//! local to this proxy (an operator's decision for one instance: other
//! instances are not told), while a reset that closes an open circuit is
//! published like any recovery.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde_json::Value;

use super::info::circuit_entry;
use super::PathParam;
use crate::auth::Admin;
use crate::error::ApiError;
use crate::state::{AppState, Shared};

/// The routes of this module.
pub(crate) fn routes() -> Router<Shared> {
    Router::new()
        .route("/v1/admin/circuits", get(super::info::circuits))
        .route("/v1/admin/circuits/{upstream}/force-open", post(force_open))
        .route(
            "/v1/admin/circuits/{upstream}/force-closed",
            post(force_closed),
        )
        .route("/v1/admin/circuits/{upstream}/reset", post(reset))
}

type Answer = Result<Json<Value>, ApiError>;

async fn force_open(state: State<Shared>, admin: Extension<Admin>, path: PathParam) -> Answer {
    act(state, admin, path, Action::ForceOpen).await
}

async fn force_closed(state: State<Shared>, admin: Extension<Admin>, path: PathParam) -> Answer {
    act(state, admin, path, Action::ForceClosed).await
}

async fn reset(state: State<Shared>, admin: Extension<Admin>, path: PathParam) -> Answer {
    act(state, admin, path, Action::Reset).await
}

/// What an admin does to a circuit.
#[derive(Clone, Copy, Debug)]
enum Action {
    ForceOpen,
    ForceClosed,
    Reset,
}

impl Action {
    fn name(self) -> &'static str {
        match self {
            Action::ForceOpen => "force_open",
            Action::ForceClosed => "force_closed",
            Action::Reset => "reset",
        }
    }
}

async fn act(
    State(state): State<Shared>,
    Extension(admin): Extension<Admin>,
    PathParam(upstream): PathParam,
    action: Action,
) -> Answer {
    let entry = apply(&state, &upstream, action)?;
    tracing::info!(
        target: "llm_proxy::audit",
        admin = %admin.admin_id,
        action = action.name(),
        upstream = %upstream,
        "circuit changed by an admin"
    );
    state.audit.record(
        &admin.admin_id,
        &format!("circuit_{}", action.name()),
        &upstream,
        String::new(),
    );
    Ok(Json(entry))
}

fn apply(state: &AppState, upstream: &str, action: Action) -> Result<Value, ApiError> {
    let found = state
        .pipeline
        .circuits
        .iter()
        .zip(&state.pipeline.extras)
        .find(|((name, _), _)| &**name == upstream);
    let Some(((name, handle), (_, extras))) = found else {
        return Err(ApiError::not_found(
            "circuit_not_found",
            format!("no upstream named {upstream:?} has a circuit"),
        ));
    };
    let circuit = handle.circuit();
    match action {
        Action::ForceOpen => circuit.force_open(),
        Action::ForceClosed => circuit.force_closed(),
        Action::Reset => circuit.reset(),
    }
    Ok(circuit_entry(name, handle, extras))
}
