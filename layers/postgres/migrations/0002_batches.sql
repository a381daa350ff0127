-- Successes of named batches: one row per batch run (its deadline), one per item.
CREATE TABLE tower_llm_batch_runs (
    batch_id   TEXT COLLATE "C" PRIMARY KEY,
    expires_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX tower_llm_batch_runs_by_expiry ON tower_llm_batch_runs (expires_at);
CREATE TABLE tower_llm_batch_items (
    batch_id      TEXT COLLATE "C" NOT NULL
                  REFERENCES tower_llm_batch_runs (batch_id) ON DELETE CASCADE,
    item_key      TEXT COLLATE "C" NOT NULL,
    response_json TEXT NOT NULL,
    attempts      BIGINT NOT NULL,
    bytes         BIGINT NOT NULL,
    PRIMARY KEY (batch_id, item_key)
);
