package tetragon

import (
	"context"
	"errors"
	"io"
	"time"

	"github.com/rs/zerolog"

	"parry.dev/parry/internal/events"
	"parry.dev/parry/internal/logging"
	"parry.dev/parry/internal/publish"
)

// Options say what Run reads and where it sends.
type Options struct {
	// Path is Tetragon's export file, followed as it grows and rotates;
	// "-" reads Stdin to its end instead.
	Path  string
	Stdin io.Reader
	// FromStart reads the file from its start; by default only lines
	// written after Run starts are sent, so an old file is not replayed.
	FromStart bool
	// Poll is how often the file is checked for new lines; zero means
	// 250ms.
	Poll time.Duration
	// MaxAge skips events older than this instead of sending them: the
	// Broker refuses them anyway (its freshness bound, 5 minutes by
	// default). Zero means 5 minutes.
	MaxAge time.Duration
	Mapper Mapper
	Sender *publish.Sender
	Log    zerolog.Logger
}

// Stats count what Run did with the lines it read.
type Stats struct {
	Lines     int
	Sent      int
	Refused   int // 4xx from the Broker
	Stale     int // older than MaxAge
	Malformed int
	// Skipped counts lines of other event kinds by kind.
	Skipped map[string]int
}

// Run reads Tetragon's export and sends each exec to the Broker, one at a
// time, until ctx is done (or the end of Stdin). Lines it cannot use are
// counted and logged; only a file that cannot be read ends it with an
// error. Events are sent in order and each waits for the Broker to take
// it, so a Broker that is away holds the file's reading back rather than
// buffering without bound.
func Run(ctx context.Context, o Options) (Stats, error) {
	st := Stats{Skipped: map[string]int{}}
	if o.Poll == 0 {
		o.Poll = 250 * time.Millisecond
	}
	if o.MaxAge == 0 {
		o.MaxAge = 5 * time.Minute
	}
	log := o.Log.With().Str(logging.FieldComponent, "ingest-tetragon").Logger()
	handle := func(raw []byte, readErr error) {
		st.Lines++
		e, kind, err := o.Mapper.Map(raw)
		if readErr != nil {
			err = readErr
		}
		switch {
		case err != nil:
			st.Malformed++
			log.Warn().Err(err).Int("malformed", st.Malformed).Msg("skipped a line of Tetragon's export")
			return
		case e == nil:
			st.Skipped[kind]++
			log.Debug().Str("kind", kind).Int("skipped", st.Skipped[kind]).Msg("skipped a Tetragon event that is not an exec")
			return
		}
		if age := time.Since(e.Time()); age > o.MaxAge {
			st.Stale++
			log.Warn().Str(logging.FieldEventID, e.ID()).Dur("age", age).Int("stale", st.Stale).
				Msg("skipped an exec older than the Broker accepts (--max-age); the export is behind, or the file was read from its start")
			return
		}
		err = o.Sender.Send(ctx, *e)
		var refused *publish.RefusedError
		switch {
		case err == nil:
			st.Sent++
			log.Debug().Str(logging.FieldEventID, e.ID()).Str("exe", events.String(*e, events.ExtExe)).Msg("sent")
		case errors.As(err, &refused):
			st.Refused++
			log.Error().Str(logging.FieldEventID, e.ID()).Int(logging.FieldStatus, refused.Status).
				Str(logging.FieldReason, refused.Reason).Int("refused", st.Refused).Msg("the broker refused an exec; it is dropped")
		}
	}
	var err error
	if o.Path == "-" {
		err = Lines(ctx, o.Stdin, handle)
	} else {
		log.Info().Str(logging.FieldPath, o.Path).Bool("from_start", o.FromStart).Str(logging.FieldBroker, o.Sender.URL).Msg("following Tetragon's export")
		err = Tail(ctx, o.Path, o.FromStart, o.Poll, handle)
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		err = nil
	}
	log.Info().Int("lines", st.Lines).Int("sent", st.Sent).Int("refused", st.Refused).Int("stale", st.Stale).
		Int("malformed", st.Malformed).Interface("skipped", st.Skipped).Msg("stopped")
	return st, err
}
