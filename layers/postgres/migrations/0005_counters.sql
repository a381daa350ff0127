-- Fixed-window counters shared by instances (budgets, rate limits): one row per
-- key and window, kept until expires_at.
CREATE TABLE tower_llm_counters (
    key        TEXT COLLATE "C" NOT NULL,
    "window"   BIGINT NOT NULL,
    value      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (key, "window")
);
CREATE INDEX tower_llm_counters_by_expiry ON tower_llm_counters (expires_at);
