//! `[budgets]`: spend, request and token limits per client key.

use std::collections::BTreeMap;

use super::*;

/// Limits per client key: a `default` for every key, and `keys` by client key
/// id (the 16 hex digits `GET /v1/usage` shows; `-` for an open proxy) over it.
///
/// ```toml
/// [budgets.default]
/// budget_usd = 50
/// budget_period = "30d"
/// rpm = 600
/// tpm = 200000
///
/// [budgets.keys."1f2e3d4c5b6a7988"]
/// budget_usd = 5
/// ```
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetsConfig {
    /// The limits of every client key without its own.
    #[serde(default)]
    pub default: Option<BudgetConfig>,
    /// Limits by client key id.
    #[serde(default)]
    pub keys: BTreeMap<String, BudgetConfig>,
}

/// One client key's limits; each is optional.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// Dollars a key may spend per `budget_period` (costs from `[usage]`'s
    /// prices).
    #[serde(default)]
    pub budget_usd: Option<f64>,
    /// The budget's period (`"30d"`, `"24h"`, `"7d"`): fixed windows counted from
    /// the Unix epoch (default 30 days).
    #[serde(default = "default_period", deserialize_with = "period")]
    pub budget_period: Duration,
    /// Requests per minute (fixed one-minute windows).
    #[serde(default)]
    pub rpm: Option<u64>,
    /// Tokens (input and output) per minute; a request is refused once the
    /// minute's tokens reached it.
    #[serde(default)]
    pub tpm: Option<u64>,
}

fn default_period() -> Duration {
    Duration::from_secs(30 * 24 * 3600)
}

fn period<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    let value = humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a period like \"30d\" ({e})"))
    })?;
    if value < Duration::from_secs(60) || value.as_secs_f64() >= MAX_SECS {
        return Err(serde::de::Error::custom(format!(
            "{text:?}: a budget period is at least 1 minute"
        )));
    }
    Ok(Duration::from_secs(value.as_secs()))
}

impl BudgetsConfig {
    /// `true` when some key has a limit.
    pub fn any(&self) -> bool {
        self.default.is_some() || !self.keys.is_empty()
    }

    pub(super) fn validate(&self, usage_enabled: bool) -> Result<(), ConfigError> {
        let tables = self
            .default
            .iter()
            .map(|b| ("budgets.default".to_owned(), b))
            .chain(
                self.keys
                    .iter()
                    .map(|(id, b)| (format!("budgets.keys.{id:?}"), b)),
            );
        for (table, budget) in tables {
            if let Some(usd) = budget.budget_usd {
                if !(0.0..1e9).contains(&usd) {
                    return err(format!(
                        "{table}.budget_usd must be a number of dollars >= 0"
                    ));
                }
            }
            if budget.rpm == Some(0) || budget.tpm == Some(0) {
                return err(format!("{table}: rpm and tpm must be at least 1"));
            }
        }
        if self.any() && !usage_enabled {
            return err("[budgets] needs [usage] enabled: spend and tokens are counted there");
        }
        Ok(())
    }
}
