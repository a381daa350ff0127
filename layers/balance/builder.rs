//! Building a balancer over several deployments of one model.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::balance::p2c::Balance;
use tower::discover::ServiceList;
use tower::load::{CompleteOnResponse, PeakEwma};
use tower_layer::Layer;

use super::gate::{Deployment, Gate};
use super::Handle;
use crate::circuit_breaker::{self, CircuitBreaker};
use crate::classify::DefaultClassifier;

/// One deployment as the balancer holds it: its service (behind its circuit
/// breaker), gated by the circuit, its load measured by peak EWMA latency.
pub type Balanced<S> = PeakEwma<Gate<S>, CompleteOnResponse>;

/// tower's power-of-two-choices [`Balance`] over gated deployments, as
/// [`Builder::build_with_circuits`] makes it.
pub type GatedBalance<S, Req> = Balance<ServiceList<Vec<Balanced<S>>>, Req>;

/// The balancer [`Builder::build`] makes: each deployment behind a circuit
/// breaker of its own.
pub type P2cBalance<S, Req, C = DefaultClassifier> = GatedBalance<CircuitBreaker<S, C>, Req>;

/// The largest weight of a deployment ([`Builder::build_weighted`]).
pub const MAX_WEIGHT: u32 = 100;

/// A setting `build()` refused, with the reason.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum BuildError {
    /// No deployment was given.
    NoDeployments,
    /// Two deployments have the same name.
    DuplicateName(String),
    /// A duration that must be positive was zero.
    ZeroDuration(&'static str),
    /// A deployment's weight is not between 1 and [`MAX_WEIGHT`].
    Weight(String, u32),
    /// The circuit breaker settings were refused.
    Breaker(circuit_breaker::BuildError),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::NoDeployments => write!(f, "balance: at least one deployment is needed"),
            BuildError::DuplicateName(name) => {
                write!(f, "balance: two deployments are named {name:?}")
            }
            BuildError::ZeroDuration(what) => {
                write!(f, "balance: {what} must be longer than zero")
            }
            BuildError::Breaker(err) => write!(f, "balance: {err}"),
            BuildError::Weight(name, weight) => write!(
                f,
                "balance: deployment {name:?} has weight {weight}, not between 1 and {MAX_WEIGHT}"
            ),
        }
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BuildError::Breaker(err) => Some(err),
            _ => None,
        }
    }
}

/// Builds a [`P2cBalance`]; see the [module docs](super).
///
/// Defaults: each deployment gets a circuit breaker with
/// [`CircuitBreakerLayer`](crate::CircuitBreakerLayer)'s defaults, named after
/// it; a deployment not yet measured is assumed to answer in 1 s; latency
/// estimates decay over 10 s.
#[derive(Clone, Debug)]
pub struct Builder<C = DefaultClassifier> {
    breaker: circuit_breaker::Builder<C>,
    default_rtt: Duration,
    decay: Duration,
    seed: Option<u64>,
}

impl Default for Builder {
    fn default() -> Self {
        Self::new()
    }
}

impl Builder {
    /// A builder with the defaults.
    pub fn new() -> Self {
        Self {
            breaker: circuit_breaker::Builder::new(),
            default_rtt: Duration::from_secs(1),
            decay: Duration::from_secs(10),
            seed: None,
        }
    }
}

impl<C> Builder<C> {
    /// The circuit breaker settings each deployment gets (its name is set to the
    /// deployment's).
    pub fn breaker<C2>(self, breaker: circuit_breaker::Builder<C2>) -> Builder<C2> {
        Builder {
            breaker,
            default_rtt: self.default_rtt,
            decay: self.decay,
            seed: self.seed,
        }
    }

    /// The latency assumed for a deployment before its first answer (default 1 s).
    pub fn default_rtt(mut self, rtt: Duration) -> Self {
        self.default_rtt = rtt;
        self
    }

    /// How fast a latency peak is forgotten (default 10 s).
    pub fn decay(mut self, decay: Duration) -> Self {
        self.decay = decay;
        self
    }

    /// Seed the choice of the two candidates, for reproducible runs and tests.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// Build the balancer over `deployments` (name, service), and a [`Handle`]
    /// on their circuits and call counts.
    pub fn build<S, Req, N>(
        self,
        deployments: impl IntoIterator<Item = (N, S)>,
    ) -> Result<(P2cBalance<S, Req, C>, Handle), BuildError>
    where
        N: Into<Arc<str>>,
        C: Clone,
        CircuitBreaker<S, C>: tower_service::Service<Req, Error = crate::BoxError>,
    {
        let mut guarded = Vec::new();
        for (name, service) in deployments {
            let (name, service, circuit) = self.guard(name, service)?;
            guarded.push((name, vec![service], circuit));
        }
        self.assemble(guarded)
    }

    /// Like [`build`](Self::build), with a weight per deployment (name,
    /// service, weight from 1 to [`MAX_WEIGHT`]): a deployment of weight `w`
    /// takes `w` places among the candidates p2c draws from (clones of its
    /// service, sharing its circuit breaker), so at equal latency it gets about
    /// `w` times the traffic of a deployment of weight 1. Latency still
    /// decides between the two candidates drawn: a slow or open deployment
    /// loses whatever its weight.
    ///
    /// ```
    /// use tower::{service_fn, Service, ServiceExt};
    /// use tower_llm_resilience::balance;
    /// use tower_llm_resilience::circuit_breaker::CircuitBreakerLayer;
    /// use tower_llm_resilience::classify::ErrorOnlyClassifier;
    /// use tower_llm_resilience::BoxError;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), BoxError> {
    /// let region = |name: &'static str| {
    ///     service_fn(move |_: String| async move { Ok::<_, BoxError>(name) })
    /// };
    /// let (mut balancer, handle) = balance::Builder::new()
    ///     .breaker(CircuitBreakerLayer::builder().classifier(ErrorOnlyClassifier))
    ///     .seed(7)
    ///     .build_weighted([("big", region("big"), 3), ("small", region("small"), 1)])?;
    /// for _ in 0..400 {
    ///     balancer.ready().await?.call("hi".to_owned()).await?;
    /// }
    /// let calls: Vec<u64> = handle.deployments().iter().map(|d| d.calls).collect();
    /// assert!(calls[0] > 2 * calls[1], "{calls:?}");
    /// # Ok(())
    /// # }
    /// ```
    pub fn build_weighted<S, Req, N>(
        self,
        deployments: impl IntoIterator<Item = (N, S, u32)>,
    ) -> Result<(P2cBalance<S, Req, C>, Handle), BuildError>
    where
        N: Into<Arc<str>>,
        C: Clone,
        S: Clone,
        CircuitBreaker<S, C>: tower_service::Service<Req, Error = crate::BoxError>,
    {
        let mut guarded = Vec::new();
        for (name, service, weight) in deployments {
            let name: Arc<str> = name.into();
            if !(1..=MAX_WEIGHT).contains(&weight) {
                return Err(BuildError::Weight(name.to_string(), weight));
            }
            let (name, service, circuit) = self.guard(name, service)?;
            let places = vec![service; weight as usize];
            guarded.push((name, places, circuit));
        }
        self.assemble(guarded)
    }

    /// `service` behind a circuit breaker of its own, named `name`.
    #[allow(clippy::type_complexity)]
    fn guard<S, N: Into<Arc<str>>>(
        &self,
        name: N,
        service: S,
    ) -> Result<(Arc<str>, CircuitBreaker<S, C>, circuit_breaker::Handle<()>), BuildError>
    where
        C: Clone,
    {
        let name: Arc<str> = name.into();
        let layer = self
            .breaker
            .clone()
            .name(name.to_string())
            .build()
            .map_err(BuildError::Breaker)?;
        let circuit = layer.handle();
        Ok((name, layer.layer(service), circuit))
    }

    /// Build the balancer over services that already sit behind circuit
    /// breakers of their own (shared with other callers, say): each
    /// deployment is (name, service, the handle of the breaker the service
    /// calls through). The [`breaker`](Self::breaker) settings are not used.
    pub fn build_with_circuits<S, Req, N>(
        self,
        deployments: impl IntoIterator<Item = (N, S, circuit_breaker::Handle<()>)>,
    ) -> Result<(GatedBalance<S, Req>, Handle), BuildError>
    where
        N: Into<Arc<str>>,
        S: tower_service::Service<Req, Error = crate::BoxError>,
    {
        let deployments = deployments
            .into_iter()
            .map(|(name, service, circuit)| (name.into(), vec![service], circuit))
            .collect();
        self.assemble(deployments)
    }

    /// The balancer over each deployment's places (one per unit of weight).
    #[allow(clippy::type_complexity)]
    fn assemble<S, Req>(
        self,
        deployments: Vec<(Arc<str>, Vec<S>, circuit_breaker::Handle<()>)>,
    ) -> Result<(GatedBalance<S, Req>, Handle), BuildError>
    where
        S: tower_service::Service<Req, Error = crate::BoxError>,
    {
        if self.default_rtt.is_zero() {
            return Err(BuildError::ZeroDuration("default_rtt"));
        }
        if self.decay.is_zero() {
            return Err(BuildError::ZeroDuration("decay"));
        }
        let decay_ns = self.decay.as_nanos() as f64;
        let mut shared = Vec::new();
        let mut services = Vec::new();
        for (name, places, circuit) in deployments {
            if shared.iter().any(|d: &Arc<Deployment>| d.name == name) {
                return Err(BuildError::DuplicateName(name.to_string()));
            }
            let deployment = Arc::new(Deployment::new(name, circuit));
            for service in places {
                let gated = Gate::new(service, deployment.clone());
                services.push(PeakEwma::new(
                    gated,
                    self.default_rtt,
                    decay_ns,
                    CompleteOnResponse::default(),
                ));
            }
            shared.push(deployment);
        }
        if services.is_empty() {
            return Err(BuildError::NoDeployments);
        }
        let discover = ServiceList::new::<Req>(services);
        let seed = self.seed.unwrap_or_else(|| fastrand::u64(..));
        let balance = Balance::from_rng(discover, SeededRng(fastrand::Rng::with_seed(seed)));
        Ok((
            balance,
            Handle {
                deployments: shared,
            },
        ))
    }
}

/// tower's [`Rng`](tower::util::rng::Rng) over a seeded `fastrand` generator.
struct SeededRng(fastrand::Rng);

impl tower::util::rng::Rng for SeededRng {
    fn next_u64(&mut self) -> u64 {
        self.0.u64(..)
    }
}
