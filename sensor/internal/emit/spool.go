package emit

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// spool is an append-only queue on disk, bounded in bytes. Records are
// framed as length, CRC-32C and payload in numbered segment files; the read
// position is kept in a cursor file so a restarted sensor resumes where it
// stopped (redelivering at most the records after the last saved cursor —
// their ids are deterministic, so receivers can tell).
type spool struct {
	dir    string
	max    int64
	segMax int64

	segs  []uint64 // segment numbers, oldest first
	bytes int64    // on disk, all segments
	count int      // records not yet acknowledged

	w     *os.File
	wSeg  uint64
	wSize int64

	r      *os.File
	br     *bufio.Reader
	rSeg   uint64
	rOff   int64
	peeked []byte
	pLen   int64

	acks    int
	corrupt uint64
}

const (
	frameHeader  = 8
	cursorEvery  = 64
	defaultSegSz = 1 << 20
)

var (
	errSpoolFull = errors.New("spool full")
	castagnoli   = crc32.MakeTable(crc32.Castagnoli)
)

func openSpool(dir string, max int64) (*spool, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("spool directory %s: %w", dir, err)
	}
	s := &spool{dir: dir, max: max, segMax: min(defaultSegSz, max/4+1)}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("spool directory %s: %w", dir, err)
	}
	for _, e := range ents {
		if n, ok := strings.CutSuffix(e.Name(), ".seg"); ok {
			if v, err := strconv.ParseUint(n, 10, 64); err == nil {
				s.segs = append(s.segs, v)
				if info, err := e.Info(); err == nil {
					s.bytes += info.Size()
				}
			}
		}
	}
	slices.Sort(s.segs)
	if len(s.segs) > 0 {
		s.rSeg = s.segs[0]
		if b, err := os.ReadFile(filepath.Join(dir, "cursor")); err == nil {
			var seg uint64
			var off int64
			if _, err := fmt.Sscanf(string(b), "%d %d", &seg, &off); err == nil && slices.Contains(s.segs, seg) {
				// segments before the cursor's were drained
				for len(s.segs) > 0 && s.segs[0] < seg {
					s.removeSeg(s.segs[0])
				}
				s.rSeg, s.rOff = seg, off
			}
		}
		s.count = s.countPending()
	}
	return s, nil
}

func (s *spool) segPath(n uint64) string { return filepath.Join(s.dir, fmt.Sprintf("%016d.seg", n)) }

// countPending scans the unread records (start-up only).
func (s *spool) countPending() int {
	n := 0
	for _, seg := range s.segs {
		f, err := os.Open(s.segPath(seg))
		if err != nil {
			continue
		}
		if seg == s.rSeg {
			f.Seek(s.rOff, io.SeekStart)
		}
		br := bufio.NewReader(f)
		for {
			if _, err := readFrame(br); err != nil {
				break
			}
			n++
		}
		f.Close()
	}
	return n
}

func (s *spool) empty() bool { return s.count == 0 }

// append writes one record, or returns errSpoolFull.
func (s *spool) append(b []byte) error {
	need := int64(len(b) + frameHeader)
	if s.bytes+need > s.max {
		return errSpoolFull
	}
	if s.w == nil || s.wSize+need > s.segMax {
		if err := s.rotate(); err != nil {
			return err
		}
	}
	var h [frameHeader]byte
	binary.LittleEndian.PutUint32(h[:4], uint32(len(b)))
	binary.LittleEndian.PutUint32(h[4:], crc32.Checksum(b, castagnoli))
	if _, err := s.w.Write(append(h[:], b...)); err != nil {
		return fmt.Errorf("writing spool segment: %w", err)
	}
	s.wSize += need
	s.bytes += need
	s.count++
	return nil
}

func (s *spool) rotate() error {
	if s.w != nil {
		s.w.Close()
	}
	next := uint64(1)
	if len(s.segs) > 0 {
		next = s.segs[len(s.segs)-1] + 1
	}
	f, err := os.OpenFile(s.segPath(next), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("creating spool segment: %w", err)
	}
	if len(s.segs) == 0 {
		s.rSeg, s.rOff = next, 0
	}
	s.segs = append(s.segs, next)
	s.w, s.wSeg, s.wSize = f, next, 0
	return nil
}

func readFrame(br *bufio.Reader) ([]byte, error) {
	var h [frameHeader]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return nil, err
	}
	n := binary.LittleEndian.Uint32(h[:4])
	if n > 16<<20 {
		return nil, errors.New("frame too large")
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(br, b); err != nil {
		return nil, err
	}
	if crc32.Checksum(b, castagnoli) != binary.LittleEndian.Uint32(h[4:]) {
		return nil, errors.New("checksum mismatch")
	}
	return b, nil
}

// peek returns the oldest unacknowledged record, nil when empty.
func (s *spool) peek() ([]byte, error) {
	if s.peeked != nil {
		return s.peeked, nil
	}
	for s.count > 0 {
		if s.r == nil {
			f, err := os.Open(s.segPath(s.rSeg))
			if err != nil {
				return nil, fmt.Errorf("opening spool segment: %w", err)
			}
			if _, err := f.Seek(s.rOff, io.SeekStart); err != nil {
				f.Close()
				return nil, err
			}
			s.r, s.br = f, bufio.NewReader(f)
		}
		b, err := readFrame(s.br)
		if err == nil {
			s.peeked, s.pLen = b, int64(len(b)+frameHeader)
			return b, nil
		}
		if !errors.Is(err, io.EOF) || s.rSeg != s.wSeg {
			if !errors.Is(err, io.EOF) {
				// a torn write from a crash: the rest of this segment is lost
				s.corrupt++
			}
			if s.rSeg == s.wSeg {
				// the writer's own segment: start a fresh one
				s.w.Close()
				s.w = nil
			}
			s.finishSegment()
			if s.rSeg == 0 {
				s.count = 0
			}
			continue
		}
		return nil, nil // caught up with the writer
	}
	return nil, nil
}

// ack drops the record peek returned.
func (s *spool) ack() {
	if s.peeked == nil {
		return
	}
	s.peeked = nil
	s.rOff += s.pLen
	s.count--
	s.acks++
	if s.count == 0 {
		// drained: drop every segment, start afresh
		for _, seg := range slices.Clone(s.segs) {
			if s.w != nil && seg == s.wSeg {
				s.w.Close()
				s.w = nil
			}
			s.removeSeg(seg)
		}
		if s.r != nil {
			s.r.Close()
			s.r = nil
		}
		s.rSeg, s.rOff = 0, 0
		os.Remove(filepath.Join(s.dir, "cursor"))
		return
	}
	if s.acks%cursorEvery == 0 {
		s.saveCursor()
	}
}

func (s *spool) finishSegment() {
	if s.r != nil {
		s.r.Close()
		s.r = nil
	}
	s.removeSeg(s.rSeg)
	s.rSeg, s.rOff = 0, 0
	if len(s.segs) > 0 {
		s.rSeg = s.segs[0]
	}
}

func (s *spool) removeSeg(seg uint64) {
	if info, err := os.Stat(s.segPath(seg)); err == nil {
		s.bytes -= info.Size()
	}
	os.Remove(s.segPath(seg))
	if i := slices.Index(s.segs, seg); i >= 0 {
		s.segs = slices.Delete(s.segs, i, i+1)
	}
}

func (s *spool) saveCursor() {
	if s.rSeg == 0 {
		return
	}
	tmp := filepath.Join(s.dir, "cursor.tmp")
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%d %d\n", s.rSeg, s.rOff), 0o600); err == nil {
		os.Rename(tmp, filepath.Join(s.dir, "cursor"))
	}
}

func (s *spool) close() {
	s.saveCursor()
	if s.w != nil {
		s.w.Close()
	}
	if s.r != nil {
		s.r.Close()
	}
}
