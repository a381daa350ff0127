-- Open circuits shared between instances: a row while open (no row: closed).
CREATE TABLE tower_llm_circuits (
    name       TEXT COLLATE "C" NOT NULL,
    circuit    TEXT COLLATE "C" NOT NULL,
    open_until TIMESTAMPTZ NOT NULL,
    origin     TEXT NOT NULL,
    PRIMARY KEY (name, circuit)
);
