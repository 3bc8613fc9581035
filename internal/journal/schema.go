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
	-- Who sent it: the authenticated identity (for a step's reply, the
	-- Trigger that delivered to the step); '' when unauthenticated.
	sender    TEXT NOT NULL DEFAULT '',
	-- CloudEvents identity is source + id, and duplicates are only those
	-- of one sender, so nobody can pre-send an id to suppress another's
	-- event. id first so that lookups by id alone use this index too: one
	-- index on random ids, not two, halves the pages a commit writes.
	UNIQUE (id, source, sender)
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

// migrateSender rebuilds an events table from before senders were
// recorded (its uniqueness was (id, source)); old events get sender ”.
// SQLite cannot change a table's constraints in place.
const migrateSender = `
ALTER TABLE events RENAME TO events_before_sender;
DROP INDEX IF EXISTS events_by_incident;
DROP INDEX IF EXISTS events_by_causation;
` + schema + `
INSERT INTO events (seq, id, source, type, subject, incident, causation, traceid, broker, received, body)
	SELECT seq, id, source, type, subject, incident, causation, traceid, broker, received, body FROM events_before_sender;
DROP TABLE events_before_sender;
`

// hasSenderSQL is 1 when the events table records senders (or does not
// exist yet), 0 for a journal that needs migrateSender.
const hasSenderSQL = `SELECT NOT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events')
	OR EXISTS (SELECT 1 FROM pragma_table_info('events') WHERE name = 'sender')`
