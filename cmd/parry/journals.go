package main

import (
	"context"
	"flag"

	"parry.dev/parry/internal/journal"
)

// journalFlag is --journal of the commands that read a journal: the SQLite
// file parry run writes (the default).
func journalFlag(fs *flag.FlagSet) *string {
	return fs.String("journal", defaultJournal(), "the journal to read: the SQLite file parry run writes")
}

// openJournal opens the journal where names, for reading.
func openJournal(ctx context.Context, where string) (journal.Reader, error) {
	return journal.OpenReadOnly(ctx, where)
}
