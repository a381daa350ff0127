-- Escalation records (JSON next to the queried columns) and their audit trail.
CREATE TABLE tower_llm_escalations (
    id            TEXT COLLATE "C" PRIMARY KEY,
    version       BIGINT NOT NULL,
    status        TEXT NOT NULL,
    created_at_ms BIGINT NOT NULL,
    record        TEXT NOT NULL
);
CREATE INDEX tower_llm_escalations_by_created ON tower_llm_escalations (created_at_ms, id);
CREATE INDEX tower_llm_escalations_by_status ON tower_llm_escalations (status, created_at_ms, id);
CREATE TABLE tower_llm_escalation_audit (
    seq           BIGSERIAL PRIMARY KEY,
    escalation_id TEXT COLLATE "C" NOT NULL,
    entry         TEXT NOT NULL
);
CREATE INDEX tower_llm_escalation_audit_by_id ON tower_llm_escalation_audit (escalation_id, seq);
