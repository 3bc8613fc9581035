package journal

const schema = `
CREATE TABLE IF NOT EXISTS events (
	seq       INTEGER PRIMARY KEY,
	id        TEXT NOT NULL,
	source    TEXT NOT NULL,
	type      TEXT NOT NULL,
	subject   TEXT NOT NULL DEFAULT '',
	incident  TEXT,
	causation TEXT,
	traceid   TEXT NOT NULL DEFAULT '',
	broker    TEXT NOT NULL,
	received  INTEGER NOT NULL,
	body      BLOB NOT NULL,
	-- CloudEvents identity is source + id; id first so that lookups by id
	-- alone use this index too: one index on random ids, not two, halves
	-- the pages a commit writes.
	UNIQUE (id, source)
);
CREATE INDEX IF NOT EXISTS events_by_incident ON events (incident) WHERE incident IS NOT NULL;
CREATE INDEX IF NOT EXISTS events_by_causation ON events (causation) WHERE causation IS NOT NULL;

CREATE TABLE IF NOT EXISTS deliveries (
	event_seq INTEGER NOT NULL,
	trigger   TEXT NOT NULL,
	target    TEXT NOT NULL,
	state     TEXT NOT NULL,
	attempts  INTEGER NOT NULL DEFAULT 0,
	code      INTEGER NOT NULL DEFAULT 0,
	error     TEXT NOT NULL DEFAULT '',
	reply_seq INTEGER,
	updated   INTEGER NOT NULL,
	PRIMARY KEY (event_seq, trigger, target)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS deliveries_pending ON deliveries (event_seq) WHERE state = 'pending';
`
