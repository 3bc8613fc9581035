package journal

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
)

// sqliteSteps are the journal file's schema versions: step i (0-based)
// brings a file to version i+1, recorded in PRAGMA user_version in the same
// transaction. Never edit a step once released: add one.
var sqliteSteps = []string{
	// 1: events and their deliveries.
	`CREATE TABLE events (
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
		UNIQUE (id, source)
	);
	CREATE INDEX events_by_incident ON events (incident) WHERE incident IS NOT NULL;
	CREATE INDEX events_by_causation ON events (causation) WHERE causation IS NOT NULL;
	CREATE TABLE deliveries (
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
	CREATE INDEX deliveries_pending ON deliveries (event_seq) WHERE state = 'pending';`,

	// 2: senders. Who sent an event is the authenticated identity (for a
	// step's reply, the Trigger that delivered to the step; '' when
	// unauthenticated), and duplicates are only those of one sender, so
	// nobody can pre-send an id to suppress another's event. SQLite cannot
	// change a table's constraints in place: the table is rebuilt, its
	// events keeping their seq, older ones getting sender ''. id leads the
	// unique index so that lookups by id alone use it too: one index on
	// random ids, not two, halves the pages a commit writes.
	`ALTER TABLE events RENAME TO events_before_sender;
	DROP INDEX IF EXISTS events_by_incident;
	DROP INDEX IF EXISTS events_by_causation;
	CREATE TABLE events (
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
		sender    TEXT NOT NULL DEFAULT '',
		UNIQUE (id, source, sender)
	);
	CREATE INDEX events_by_incident ON events (incident) WHERE incident IS NOT NULL;
	CREATE INDEX events_by_causation ON events (causation) WHERE causation IS NOT NULL;
	INSERT INTO events (seq, id, source, type, subject, incident, causation, traceid, broker, received, body)
		SELECT seq, id, source, type, subject, incident, causation, traceid, broker, received, body FROM events_before_sender;
	DROP TABLE events_before_sender;`,

	// 3: the incident list reads the incident.opened events newest first.
	`CREATE INDEX events_opened ON events (seq) WHERE ` + openedCondition + `;`,
}

// errNewerSchema refuses a file a newer parry migrated: an older binary
// must not write to a schema it does not know.
var errNewerSchema = errors.New("the journal's schema is newer than this parry knows")

// sqliteVersion is the file's schema version. Files from before versions
// were recorded have user_version 0 and are recognised by their tables.
func sqliteVersion(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}) (int, error) {
	var v int
	if err := q.QueryRowContext(ctx, `PRAGMA user_version`).Scan(&v); err != nil {
		return 0, err
	}
	if v > 0 {
		return v, nil
	}
	err := q.QueryRowContext(ctx, `SELECT CASE
		WHEN NOT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events') THEN 0
		WHEN NOT EXISTS (SELECT 1 FROM pragma_table_info('events') WHERE name = 'sender') THEN 1
		ELSE 2 END`).Scan(&v)
	return v, err
}

// migrateSQLite brings the file to the newest version, each step in its own
// transaction. Only the process holding the journal's lock calls it.
func migrateSQLite(ctx context.Context, conn *sql.Conn) error {
	v, err := sqliteVersion(ctx, conn)
	if err != nil {
		return fmt.Errorf("reading the schema version: %w", err)
	}
	if v > len(sqliteSteps) {
		return fmt.Errorf("%w: version %d, this parry knows %d (run the newer parry, or pass a different --journal)", errNewerSchema, v, len(sqliteSteps))
	}
	for ; v < len(sqliteSteps); v++ {
		if _, err := conn.ExecContext(ctx, `BEGIN IMMEDIATE`); err != nil {
			return fmt.Errorf("migrating the schema to version %d: %w", v+1, err)
		}
		// PRAGMA takes no parameters; v is ours.
		if _, err := conn.ExecContext(ctx, sqliteSteps[v]+fmt.Sprintf(`; PRAGMA user_version = %d;`, v+1)); err != nil {
			_, _ = conn.ExecContext(ctx, `ROLLBACK`)
			return fmt.Errorf("migrating the schema to version %d: %w", v+1, err)
		}
		if _, err := conn.ExecContext(ctx, `COMMIT`); err != nil {
			_, _ = conn.ExecContext(ctx, `ROLLBACK`)
			return fmt.Errorf("migrating the schema to version %d: %w", v+1, err)
		}
	}
	return nil
}
