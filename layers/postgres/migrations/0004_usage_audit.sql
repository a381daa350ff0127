-- LLM usage: one row per answer (or pre-summed answers with the same key).
CREATE TABLE tower_llm_usage (
    id                  BIGSERIAL PRIMARY KEY,
    ts                  BIGINT NOT NULL,
    client              TEXT COLLATE "C" NOT NULL,
    model               TEXT COLLATE "C" NOT NULL,
    upstream_model      TEXT NOT NULL,
    tier                TEXT NOT NULL,
    input_tokens        BIGINT NOT NULL,
    cached_input_tokens BIGINT NOT NULL,
    output_tokens       BIGINT NOT NULL,
    cost_nano_usd       BIGINT NOT NULL,
    requests            BIGINT NOT NULL,
    unpriced            BIGINT NOT NULL,
    cached              BOOLEAN NOT NULL,
    degraded            BOOLEAN NOT NULL
);
CREATE INDEX tower_llm_usage_ts ON tower_llm_usage (ts);
CREATE INDEX tower_llm_usage_client_ts ON tower_llm_usage (client, ts);
-- Who did what: operators' actions and other events worth keeping.
CREATE TABLE tower_llm_audit_log (
    seq     BIGSERIAL PRIMARY KEY,
    at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    subject TEXT NOT NULL,
    detail  TEXT NOT NULL
);
CREATE INDEX tower_llm_audit_log_at ON tower_llm_audit_log (at);
