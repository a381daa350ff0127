-- Running counts of each batch's items by state, so that a batch's progress
-- reads at most 16 rows instead of all its items. Kept by statement-level
-- triggers on tower_llm_job_items, in 16 shards per batch (by a hash of the
-- item key) so that workers finishing items of one batch seldom wait on the
-- same row. Items are only ever deleted with their batch, which deletes its
-- counts too (ON DELETE CASCADE).
CREATE TABLE tower_llm_job_counts (
    batch_id TEXT COLLATE "C" NOT NULL
             REFERENCES tower_llm_job_batches (batch_id) ON DELETE CASCADE,
    shard    SMALLINT NOT NULL,
    total    BIGINT NOT NULL DEFAULT 0,
    running  BIGINT NOT NULL DEFAULT 0,
    done     BIGINT NOT NULL DEFAULT 0,
    failed   BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, shard)
);

-- The functions keep the migration's search_path: a session with another one
-- (an operator's, a deployment in its own schema) still counts in this schema.
CREATE FUNCTION tower_llm_job_counts_inserted() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO tower_llm_job_counts AS c (batch_id, shard, total, running, done, failed)
    SELECT batch_id, (hashtext(item_key) & 15)::smallint, count(*),
           count(*) FILTER (WHERE state = 'r'),
           count(*) FILTER (WHERE state = 'd'),
           count(*) FILTER (WHERE state = 'f')
    FROM inserted_items
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (batch_id, shard) DO UPDATE
    SET total = c.total + EXCLUDED.total, running = c.running + EXCLUDED.running,
        done = c.done + EXCLUDED.done, failed = c.failed + EXCLUDED.failed;
    RETURN NULL;
END $$;

CREATE FUNCTION tower_llm_job_counts_updated() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO tower_llm_job_counts AS c (batch_id, shard, total, running, done, failed)
    SELECT n.batch_id, (hashtext(n.item_key) & 15)::smallint, 0,
           sum((n.state = 'r')::int - (o.state = 'r')::int),
           sum((n.state = 'd')::int - (o.state = 'd')::int),
           sum((n.state = 'f')::int - (o.state = 'f')::int)
    FROM new_items n JOIN old_items o USING (batch_id, item_key)
    WHERE n.state <> o.state
    GROUP BY 1, 2
    ORDER BY 1, 2
    ON CONFLICT (batch_id, shard) DO UPDATE
    SET running = c.running + EXCLUDED.running, done = c.done + EXCLUDED.done,
        failed = c.failed + EXCLUDED.failed;
    RETURN NULL;
END $$;

-- No write may slip between the triggers' creation and the counts below.
LOCK TABLE tower_llm_job_items IN SHARE ROW EXCLUSIVE MODE;

CREATE TRIGGER tower_llm_job_counts_inserted AFTER INSERT ON tower_llm_job_items
    REFERENCING NEW TABLE AS inserted_items
    FOR EACH STATEMENT EXECUTE PROCEDURE tower_llm_job_counts_inserted();
CREATE TRIGGER tower_llm_job_counts_updated AFTER UPDATE ON tower_llm_job_items
    REFERENCING OLD TABLE AS old_items NEW TABLE AS new_items
    FOR EACH STATEMENT EXECUTE PROCEDURE tower_llm_job_counts_updated();

INSERT INTO tower_llm_job_counts (batch_id, shard, total, running, done, failed)
SELECT batch_id, (hashtext(item_key) & 15)::smallint, count(*),
       count(*) FILTER (WHERE state = 'r'),
       count(*) FILTER (WHERE state = 'd'),
       count(*) FILTER (WHERE state = 'f')
FROM tower_llm_job_items
GROUP BY 1, 2;
