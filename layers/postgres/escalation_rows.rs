//! Rows of the escalation tables: JSON in and out, and pages of records.

use crate::escalation::{Cursor, EscalationId, EscalationRecord, Page, Status, StoreError};

use super::connect::Postgres;
use super::error::PgError;

const PAGE: &str = "
SELECT id, created_at_ms, record FROM tower_llm_escalations
WHERE ($1::text IS NULL OR status = $1::text)
  AND (created_at_ms > $2 OR (created_at_ms = $2 AND id > $3))
ORDER BY created_at_ms, id LIMIT $4";

pub(super) fn to_json<T: serde::Serialize>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn from_json<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, StoreError> {
    serde_json::from_str(text).map_err(|e| StoreError::Corrupt(e.to_string()))
}

pub(super) fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

pub(super) fn store_error(e: PgError) -> StoreError {
    match e {
        PgError::Corrupt(why) => StoreError::Corrupt(why),
        e => StoreError::Backend(Box::new(e)),
    }
}

pub(super) async fn read(
    client: &deadpool_postgres::Object,
    id: &str,
) -> Result<Option<EscalationRecord>, PgError> {
    let row = client
        .query_opt(
            "SELECT record FROM tower_llm_escalations WHERE id = $1",
            &[&id],
        )
        .await?;
    row.map(|row| {
        serde_json::from_str(row.get::<_, &str>(0)).map_err(|e| PgError::Corrupt(e.to_string()))
    })
    .transpose()
}

/// Records in `list` order after `after`, at most `limit`; rows that cannot
/// be read back are skipped (logged and counted), never an error for the page.
pub(super) async fn read_page(
    pg: &Postgres,
    status: Option<Status>,
    after: Option<&Cursor>,
    limit: usize,
) -> Result<Page, StoreError> {
    let (after_ms, after_id) = match after {
        Some(c) => (to_i64(c.created_at_ms), c.id.as_str().to_owned()),
        None => (-1, String::new()),
    };
    let fetch = to_i64(u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1));
    let rows = pg
        .run(|client| async move {
            let statement = client.prepare_cached(PAGE).await?;
            let rows = client
                .query(
                    &statement,
                    &[&status.map(Status::as_str), &after_ms, &after_id, &fetch],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|r| {
                    (
                        r.get::<_, String>(0),
                        r.get::<_, i64>(1),
                        r.get::<_, String>(2),
                    )
                })
                .collect::<Vec<_>>())
        })
        .await
        .map_err(store_error)?;
    let mut page = Page::default();
    let mut more = false;
    for (seen, (id, created_at_ms, text)) in rows.into_iter().enumerate() {
        if seen == limit {
            more = true;
            break;
        }
        page.next = Some(Cursor {
            created_at_ms: u64::try_from(created_at_ms).unwrap_or(0),
            id: EscalationId::new(id.clone()),
        });
        match from_json(&text) {
            Ok(record) => page.records.push(record),
            Err(e) => {
                crate::escalation::store_unreadable("postgres", &id, &e);
                page.unreadable += 1;
            }
        }
    }
    if !more {
        page.next = None;
    }
    Ok(page)
}
