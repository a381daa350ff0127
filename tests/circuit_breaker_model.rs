//! Property test: the circuit breaker against a small reference model.

use std::collections::VecDeque;
use std::time::Duration;

use proptest::prelude::*;
use tower::{service_fn, BoxError, Layer, Service, ServiceExt};
use tower_llm_resilience::circuit_breaker::{
    CircuitBreakerLayer, CircuitOpen, CircuitState, Window,
};
use tower_llm_resilience::classify::{ClassifiedError, ErrorOnlyClassifier, FailureKind};

#[derive(Clone, Copy, Debug)]
enum Op {
    Call(Answer),
    Wait(u64),
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Answer {
    Ok,
    Fail,
    /// A caller bug: neither a success nor a failure for the circuit.
    Neutral,
}

#[derive(Clone, Debug)]
struct Settings {
    consecutive: Option<u32>,
    rate: Option<(f64, u32, u32)>, // (rate, window, minimum calls)
    cooldown_ms: u64,
    multiplier: f64,
    max_cooldown_ms: u64,
    probe_successes: u32,
}

#[derive(Debug, PartialEq)]
enum Seen {
    Admitted,
    Rejected(Duration),
}

/// The reference: the documented behaviour, written as plainly as possible.
struct Model {
    s: Settings,
    state: CircuitState,
    consecutive: u32,
    ring: VecDeque<bool>,
    until_ms: u64,
    trips: u32,
    probe_ok: u32,
}

impl Model {
    fn new(s: Settings) -> Self {
        Self {
            s,
            state: CircuitState::Closed,
            consecutive: 0,
            ring: VecDeque::new(),
            until_ms: 0,
            trips: 0,
            probe_ok: 0,
        }
    }

    fn open(&mut self, now: u64) {
        let grown = self.s.cooldown_ms as f64 * self.s.multiplier.powi(self.trips as i32);
        let open_ms = grown.min(self.s.max_cooldown_ms as f64);
        self.until_ms = now + open_ms as u64;
        self.trips += 1;
        self.state = CircuitState::Open;
    }

    fn call(&mut self, now: u64, answer: Answer) -> Seen {
        if self.state == CircuitState::Open {
            if now < self.until_ms {
                return Seen::Rejected(Duration::from_millis(self.until_ms - now));
            }
            self.state = CircuitState::HalfOpen;
            self.probe_ok = 0;
        }
        if self.state == CircuitState::HalfOpen {
            match answer {
                Answer::Fail => self.open(now),
                Answer::Ok => {
                    self.probe_ok += 1;
                    if self.probe_ok >= self.s.probe_successes {
                        self.state = CircuitState::Closed;
                        self.trips = 0;
                        self.consecutive = 0;
                        self.ring.clear();
                    }
                }
                Answer::Neutral => {}
            }
            return Seen::Admitted;
        }
        if answer == Answer::Neutral {
            return Seen::Admitted;
        }
        let failed = answer == Answer::Fail;
        self.consecutive = if failed { self.consecutive + 1 } else { 0 };
        let mut trip = failed && self.s.consecutive.is_some_and(|n| self.consecutive >= n);
        if let Some((rate, window, minimum)) = self.s.rate {
            self.ring.push_back(failed);
            if self.ring.len() > window as usize {
                self.ring.pop_front();
            }
            let fails = self.ring.iter().filter(|f| **f).count() as f64;
            let calls = self.ring.len();
            trip |= failed && calls >= minimum as usize && fails >= rate * calls as f64;
        }
        if trip {
            self.open(now);
        }
        Seen::Admitted
    }
}

fn settings() -> impl Strategy<Value = Settings> {
    (
        proptest::option::of(1u32..5),
        proptest::option::of((0.1f64..1.0, 1u32..8, 1u32..8)),
        1u64..5_000,
        prop_oneof![Just(1.0), Just(2.0), Just(3.0)],
        1u64..4,
        1u32..3,
    )
        .prop_filter("some trip policy", |(c, r, ..)| c.is_some() || r.is_some())
        .prop_map(
            |(consecutive, rate, cooldown_ms, multiplier, max_factor, probe_successes)| Settings {
                consecutive,
                rate,
                cooldown_ms,
                multiplier,
                max_cooldown_ms: cooldown_ms * max_factor * 2,
                probe_successes,
            },
        )
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    let op = prop_oneof![
        3 => Just(Op::Call(Answer::Ok)),
        3 => Just(Op::Call(Answer::Fail)),
        1 => Just(Op::Call(Answer::Neutral)),
        2 => (0u64..6_000).prop_map(Op::Wait),
    ];
    proptest::collection::vec(op, 1..80)
}

fn run(s: Settings, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut builder = CircuitBreakerLayer::builder()
            .cooldown(Duration::from_millis(s.cooldown_ms))
            .max_cooldown(Duration::from_millis(s.max_cooldown_ms))
            .backoff_multiplier(s.multiplier)
            .jitter(0.0)
            .probe_successes(s.probe_successes);
        builder = match s.consecutive {
            Some(n) => builder.consecutive_failures(n),
            None => builder.without_consecutive_failures(),
        };
        if let Some((rate, window, minimum)) = s.rate {
            builder = builder
                .failure_rate(rate)
                .window(Window::count(window))
                .minimum_calls(minimum);
        }
        let layer = builder.classifier(ErrorOnlyClassifier).build().unwrap();
        let handle = layer.handle();
        let mut svc = layer.layer(service_fn(|answer: Answer| async move {
            match answer {
                Answer::Ok => Ok(()),
                Answer::Fail => {
                    Err::<(), BoxError>(ClassifiedError::new(FailureKind::ServerError, "x").into())
                }
                Answer::Neutral => Err(ClassifiedError::new(FailureKind::BadRequest, "x").into()),
            }
        }));
        let mut model = Model::new(s);
        let start = tokio::time::Instant::now();
        for op in ops {
            match op {
                Op::Wait(ms) => tokio::time::advance(Duration::from_millis(ms)).await,
                Op::Call(answer) => {
                    let now = start.elapsed().as_millis() as u64;
                    let expected = model.call(now, answer);
                    let got = match svc.ready().await.unwrap().call(answer).await {
                        Err(e) if e.is::<CircuitOpen>() => {
                            Seen::Rejected(e.downcast_ref::<CircuitOpen>().unwrap().retry_after())
                        }
                        _ => Seen::Admitted,
                    };
                    prop_assert_eq!(&got, &expected, "at {}ms calling {:?}", now, answer);
                    prop_assert_eq!(handle.circuit().state(), model.state);
                }
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn breaker_matches_the_reference_model(s in settings(), ops in ops()) {
        run(s, ops)?;
    }
}
