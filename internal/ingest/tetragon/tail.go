package tetragon

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"time"
)

// MaxLine bounds one export line. Tetragon's exec lines with ancestors are
// a few kilobytes; a longer line is skipped (and reported as malformed)
// rather than buffered without end.
const MaxLine = 1 << 20

// errTooLong is reported for a line over MaxLine.
var errTooLong = errors.New("line longer than 1 MiB")

// Lines calls fn with each line of r until r ends or ctx is done; a line
// over MaxLine is passed as errTooLong instead. For a file that does not
// grow (stdin, or --file - in tests).
func Lines(ctx context.Context, r io.Reader, fn func([]byte, error)) error {
	lr := lineReader{r: bufio.NewReaderSize(r, 64<<10)}
	for ctx.Err() == nil {
		l, err := lr.next()
		switch {
		case err == nil || errors.Is(err, errTooLong):
			fn(l, err)
		case errors.Is(err, io.EOF):
			if len(lr.partial) > 0 {
				fn(lr.partial, nil)
			}
			return nil
		default:
			return err
		}
	}
	return ctx.Err()
}

// Tail follows the file at path as tail -F does and calls fn with each
// complete line: from the end of the file (from its start with
// fromStart), then every line appended. Tetragon rotates its export file
// by renaming it and creating a new one: when path names another file,
// the old one is read to its end and the new one from its start; a file
// that shrank (truncated in place) is read again from its start. A file
// that does not exist yet is waited for. It returns when ctx is done.
func Tail(ctx context.Context, path string, fromStart bool, poll time.Duration, fn func([]byte, error)) error {
	wait := func() error {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(poll):
			return nil
		}
	}
	var f *os.File
	for {
		var err error
		if f, err = os.Open(path); err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := wait(); err != nil {
			return err
		}
		// A file created after the start holds only new lines.
		fromStart = true
	}
	defer func() { f.Close() }()
	if !fromStart {
		if _, err := f.Seek(0, io.SeekEnd); err != nil {
			return err
		}
	}
	lr := lineReader{r: bufio.NewReaderSize(f, 64<<10)}
	draining := false // path names a new file: finish the old one first
	for {
		l, err := lr.next()
		if err == nil || errors.Is(err, errTooLong) {
			fn(l, err)
			continue
		}
		if !errors.Is(err, io.EOF) {
			return err
		}
		// At the end of what is written: has the file been replaced or
		// truncated?
		if draining {
			next, err := os.Open(path)
			if err != nil {
				draining = false // gone between the stat and the open: look again
				continue
			}
			f.Close()
			f, draining = next, false
			lr = lineReader{r: bufio.NewReaderSize(f, 64<<10)}
			continue
		}
		cur, err1 := f.Stat()
		now, err2 := os.Stat(path)
		switch {
		case err1 == nil && err2 == nil && !os.SameFile(cur, now):
			draining = true // one more read of the old file: lines written before the rename
			continue
		case err1 == nil:
			if pos, err := f.Seek(0, io.SeekCurrent); err == nil && cur.Size() < pos {
				if _, err := f.Seek(0, io.SeekStart); err != nil {
					return err
				}
				lr = lineReader{r: bufio.NewReaderSize(f, 64<<10)}
				continue
			}
		}
		if err := wait(); err != nil {
			return err
		}
	}
}

// lineReader reads lines, keeping a line's start across reads that end
// before its newline (the writer has not finished it).
type lineReader struct {
	r       *bufio.Reader
	partial []byte
	tooLong bool // skipping the rest of an overlong line
}

// next returns the next complete line without its newline, io.EOF when
// none is complete yet, or errTooLong once for a line over MaxLine.
func (lr *lineReader) next() ([]byte, error) {
	for {
		chunk, err := lr.r.ReadSlice('\n')
		if !lr.tooLong {
			lr.partial = append(lr.partial, chunk...)
		}
		if len(lr.partial) > MaxLine {
			lr.partial, lr.tooLong = lr.partial[:0], true
		}
		switch {
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err != nil:
			return nil, err
		}
		if lr.tooLong {
			lr.tooLong = false
			return nil, errTooLong
		}
		l := bytes.TrimRight(lr.partial, "\r\n")
		lr.partial = lr.partial[:0]
		if len(bytes.TrimSpace(l)) == 0 {
			continue
		}
		return l, nil
	}
}
