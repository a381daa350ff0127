use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::gate::Deployment;
use crate::circuit_breaker::{CircuitRef, CircuitSnapshot};

/// Access to the deployments of one balancer: their circuits and call counts.
#[derive(Clone)]
pub struct Handle {
    pub(crate) deployments: Vec<Arc<Deployment>>,
}

impl fmt::Debug for Handle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.deployments.iter().map(|d| &d.name))
            .finish()
    }
}

/// One deployment as [`Handle::deployments`] reports it.
#[derive(Clone, Debug)]
pub struct DeploymentSnapshot {
    /// Its name.
    pub name: Arc<str>,
    /// Calls the balancer sent to it.
    pub calls: u64,
    /// Its circuit's state and counters.
    pub circuit: CircuitSnapshot,
}

impl Handle {
    /// Every deployment, in the order given.
    pub fn deployments(&self) -> Vec<DeploymentSnapshot> {
        self.deployments
            .iter()
            .map(|d| DeploymentSnapshot {
                name: d.name.clone(),
                calls: d.calls.load(Ordering::Relaxed),
                circuit: d.breaker.circuit().snapshot(),
            })
            .collect()
    }

    /// The circuit of the deployment named `name`, to inspect or force.
    pub fn circuit(&self, name: &str) -> Option<CircuitRef<()>> {
        self.deployments
            .iter()
            .find(|d| &*d.name == name)
            .map(|d| d.breaker.circuit())
    }
}
