package main

import (
	"os"
	"path/filepath"
)

// defaultJournal is the journal under the user's state directory
// ($XDG_STATE_HOME, else ~/.local/state), so that `parry run` and
// `parry trace` agree without flags.
func defaultJournal() string {
	state := os.Getenv("XDG_STATE_HOME")
	if state == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			return filepath.Join(os.TempDir(), "parry", "journal.db")
		}
		state = filepath.Join(home, ".local", "state")
	}
	return filepath.Join(state, "parry", "journal.db")
}
