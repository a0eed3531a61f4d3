package history

import (
	"database/sql"
	"errors"
	"fmt"
	"time"
)

// Lock is a hold on an environment's deploys, set by `operator lock` and
// kept in the database until `operator unlock`, across restarts.
type Lock struct {
	Env    string    `json:"env"`
	Reason string    `json:"reason"`
	Who    string    `json:"who"`
	Since  time.Time `json:"since"` // when the environment was locked
}

// Lock locks env with reason, on behalf of who. Locking a locked
// environment replaces its reason and who and keeps its Since.
func (s *Store) Lock(env, reason, who string) error {
	if env == "" {
		return errors.New("lock: no environment named")
	}
	_, err := s.db.Exec(`INSERT INTO locks (env, reason, who, since) VALUES (?, ?, ?, ?)
		ON CONFLICT (env) DO UPDATE SET reason = excluded.reason, who = excluded.who`,
		env, reason, who, time.Now().UnixNano())
	if err != nil {
		return fmt.Errorf("lock %s: %w", env, err)
	}
	return nil
}

// Unlock unlocks env. Unlocking an environment that is not locked does
// nothing.
func (s *Store) Unlock(env string) error {
	if _, err := s.db.Exec(`DELETE FROM locks WHERE env = ?`, env); err != nil {
		return fmt.Errorf("unlock %s: %w", env, err)
	}
	return nil
}

// LockOf returns env's lock, or nil when env is not locked.
func (s *Store) LockOf(env string) (*Lock, error) {
	l := Lock{Env: env}
	var since int64
	err := s.db.QueryRow(`SELECT reason, who, since FROM locks WHERE env = ?`, env).Scan(&l.Reason, &l.Who, &since)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read lock of %s: %w", env, err)
	}
	l.Since = time.Unix(0, since)
	return &l, nil
}
