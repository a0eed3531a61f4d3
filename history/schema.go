package history

import (
	"database/sql"
	"fmt"
)

// migrations build the schema. Entry i takes the database from
// user_version i to i+1; Open applies the missing ones in order, in one
// transaction. Append new entries; never edit one that has shipped.
//
// Times are Unix nanoseconds and durations nanoseconds, so a record reads
// back exactly as it was written, whatever the time zone of the reader.
var migrations = []string{
	// 1: deploys and their parts, log lines, environment locks.
	`
CREATE TABLE deploys (
	id          INTEGER PRIMARY KEY AUTOINCREMENT, -- never reused
	env         TEXT    NOT NULL,
	commit_sha  TEXT    NOT NULL,
	subject     TEXT    NOT NULL DEFAULT '',
	trigger     TEXT    NOT NULL,           -- "manual", "poll", "webhook <delivery>", …
	started     INTEGER NOT NULL,
	ended       INTEGER,                    -- NULL while running
	result      TEXT    NOT NULL,
	description TEXT    NOT NULL DEFAULT '',
	pid         INTEGER NOT NULL DEFAULT 0  -- the operator process running it
);
CREATE INDEX deploys_running ON deploys (id) WHERE result = 'running';

CREATE TABLE phases (
	deploy_id INTEGER NOT NULL REFERENCES deploys (id),
	seq       INTEGER NOT NULL, -- order within the deploy, from 0
	name      TEXT    NOT NULL,
	started   INTEGER NOT NULL,
	duration  INTEGER NOT NULL,
	outcome   TEXT    NOT NULL DEFAULT '',
	PRIMARY KEY (deploy_id, seq)
) WITHOUT ROWID;

CREATE TABLE nodes (
	deploy_id   INTEGER NOT NULL REFERENCES deploys (id),
	host        TEXT    NOT NULL,
	seq         INTEGER NOT NULL, -- order of the host's first report
	from_commit TEXT    NOT NULL DEFAULT '',
	to_commit   TEXT    NOT NULL DEFAULT '',
	outcome     TEXT    NOT NULL,
	PRIMARY KEY (deploy_id, host)
) WITHOUT ROWID;

CREATE TABLE spent (
	deploy_id INTEGER NOT NULL REFERENCES deploys (id),
	kind      TEXT    NOT NULL,
	duration  INTEGER NOT NULL,
	PRIMARY KEY (deploy_id, kind)
) WITHOUT ROWID;

-- Lines can be long (up to 64 KiB), so this keeps its rowid.
CREATE TABLE log_lines (
	deploy_id INTEGER NOT NULL REFERENCES deploys (id),
	seq       INTEGER NOT NULL, -- 1, 2, … in commit order within the deploy
	time      INTEGER NOT NULL,
	host      TEXT    NOT NULL, -- '' for the operator's lines about the whole deploy
	stream    TEXT    NOT NULL,
	line      TEXT    NOT NULL, -- bytes from the host, not necessarily UTF-8
	PRIMARY KEY (deploy_id, seq)
);

CREATE TABLE locks (
	env    TEXT    PRIMARY KEY,
	reason TEXT    NOT NULL,
	who    TEXT    NOT NULL,
	since  INTEGER NOT NULL
) WITHOUT ROWID;
`,
	// 2: the operator process of a deploy, told apart from a later one
	// with the same PID (PID 1 in every container) by the kernel's boot
	// ID and the process's start time. Rows from before read '' and are
	// judged by their PID alone.
	`
ALTER TABLE deploys ADD COLUMN process TEXT NOT NULL DEFAULT '';
`,
}

// migrate brings the schema to len(migrations). The version is read again
// inside the write transaction, so two processes opening a new database at
// once apply each migration once.
func migrate(db *sql.DB) error {
	var v int
	if err := db.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v == len(migrations) {
		return nil
	}
	tx, err := db.Begin()
	if err != nil {
		return fmt.Errorf("migrate schema: %w", err)
	}
	defer tx.Rollback()
	if err := tx.QueryRow(`PRAGMA user_version`).Scan(&v); err != nil {
		return fmt.Errorf("read schema version: %w", err)
	}
	if v > len(migrations) {
		return fmt.Errorf("schema version %d is newer than this operator's %d: run a newer operator", v, len(migrations))
	}
	for i := v; i < len(migrations); i++ {
		if _, err := tx.Exec(migrations[i]); err != nil {
			return fmt.Errorf("migrate schema to version %d: %w", i+1, err)
		}
	}
	// PRAGMA takes no parameters; the value is our own integer.
	if _, err := tx.Exec(fmt.Sprintf(`PRAGMA user_version = %d`, len(migrations))); err != nil {
		return fmt.Errorf("set schema version %d: %w", len(migrations), err)
	}
	if err := tx.Commit(); err != nil {
		return fmt.Errorf("migrate schema to version %d: %w", len(migrations), err)
	}
	return nil
}
