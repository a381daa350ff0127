-- Batches as jobs: one row per batch (its pause and deadline), one per item
-- (its state, calls, claim and result). Keys sort bytewise (COLLATE "C"), so
-- paging is in the same order as on Redis.
CREATE TABLE tower_llm_job_batches (
    batch_id     TEXT COLLATE "C" PRIMARY KEY,
    paused_until TIMESTAMPTZ,
    expires_at   TIMESTAMPTZ NOT NULL
);
CREATE INDEX tower_llm_job_batches_by_expiry ON tower_llm_job_batches (expires_at);
CREATE TABLE tower_llm_job_items (
    batch_id    TEXT COLLATE "C" NOT NULL
                REFERENCES tower_llm_job_batches (batch_id) ON DELETE CASCADE,
    item_key    TEXT COLLATE "C" NOT NULL,
    -- p pending, r running (held by owner until lease_until), d done, f failed
    state       TEXT NOT NULL CHECK (state IN ('p', 'r', 'd', 'f')),
    attempts    BIGINT NOT NULL DEFAULT 0,
    lease_until TIMESTAMPTZ,
    owner       TEXT,
    -- d: the response JSON; f: the ItemFailure JSON
    result      TEXT,
    PRIMARY KEY (batch_id, item_key)
);
