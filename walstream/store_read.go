package walstream

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/walrelay/walrelay/internal/vfs"
)

// The methods in this file are safe for concurrent use by any number of
// readers and the writer.

// DurableEnd returns the timeline and position up to which WAL is fsynced
// and may be served or acknowledged.
func (s *Store) DurableEnd() (TimeLineID, LSN) {
	// Timeline first: the writer stores the position before the timeline, so
	// a reader never pairs a new timeline with an old position's successor.
	tli := TimeLineID(s.durableTLI.Load())
	return tli, LSN(s.durable.Load())
}

// Wait returns a channel that is closed the next time the durable end moves
// (or the store closes). Take it before checking DurableEnd so no advance
// between the check and the wait is missed.
func (s *Store) Wait() <-chan struct{} { return s.notify.wait() }

// ReadAt copies durable WAL of timeline tli starting at lsn into p. It never
// crosses a segment boundary and returns 0, nil when nothing past lsn is
// durable yet. A segment the store does not hold gives a *WALRemovedError.
func (s *Store) ReadAt(tli TimeLineID, lsn LSN, p []byte) (int, error) {
	b, _, err := s.read(tli, lsn, p, -1, false)
	return len(b), err
}

// Read is ReadAt without the copy where it can: WAL held in memory comes
// back as a read-only view of the store's buffer, pinned by the View until
// it is released (durable bytes never change, but the buffer is reused once
// its segment leaves the memory tail); otherwise buf is filled from the
// file. At most len(buf) bytes. Release the View, whatever the error.
func (s *Store) Read(tli TimeLineID, lsn LSN, buf []byte) ([]byte, View, error) {
	return s.read(tli, lsn, buf, -1, true)
}

func (s *Store) readAt(tli TimeLineID, lsn LSN, p []byte, limit int64) (int, error) {
	b, _, err := s.read(tli, lsn, p, limit, false)
	return len(b), err
}

// read reads from segment (tli, lsn) at most limit bytes of the segment
// (limit < 0: the segment's durable bytes; the writer verifying resent WAL
// may read its own bytes that are not durable yet).
func (s *Store) read(tli TimeLineID, lsn LSN, p []byte, limit int64, view bool) ([]byte, View, error) {
	// A segment compressed while a read was under way closes its raw file:
	// look it up again once.
	b, v, err := s.readOnce(tli, lsn, p, limit, view)
	if errors.Is(err, os.ErrClosed) {
		b, v, err = s.readOnce(tli, lsn, p, limit, view)
	}
	if errors.Is(err, os.ErrClosed) {
		s.mu.Lock()
		segSize := s.meta.SegmentSize
		s.mu.Unlock()
		return nil, v, &WALRemovedError{Segment: SegmentFileName(tli, lsn.SegmentNo(segSize), segSize)}
	}
	return b, v, err
}

func (s *Store) readOnce(tli TimeLineID, lsn LSN, p []byte, limit int64, view bool) ([]byte, View, error) {
	s.mu.Lock()
	if !s.hasMeta {
		s.mu.Unlock()
		return nil, View{}, fmt.Errorf("read %s: store has no WAL yet", lsn)
	}
	segSize := s.meta.SegmentSize
	key := segKey{tli, lsn.SegmentNo(segSize)}
	seg := s.segs[key]
	var mem []byte
	var z *zsegment
	var f vfs.File
	var path string
	var pin View
	if seg != nil {
		mem, z, f, path = seg.mem, seg.z, seg.f, seg.path
		if seg.buf != nil {
			// Pinned under s.mu, so the buffer cannot be reused while
			// its bytes are read below.
			pin = View{seg.buf}
			pin.m.views.Add(1)
		}
	}
	s.mu.Unlock()
	b, err := s.readSegment(segRead{seg, key, segSize, mem, z, f, path}, tli, lsn, p, limit, view)
	if view && mem != nil && len(b) > 0 {
		return b, pin, err
	}
	pin.Release()
	return b, View{}, err
}

// segRead is what readOnce took from a segment under the lock.
type segRead struct {
	seg     *segment // nil: not held
	key     segKey
	segSize uint64
	mem     []byte
	z       *zsegment
	f       vfs.File
	path    string
}

func (s *Store) readSegment(r segRead, tli TimeLineID, lsn LSN, p []byte, limit int64, view bool) ([]byte, error) {
	seg, key, segSize, mem, z, f, path := r.seg, r.key, r.segSize, r.mem, r.z, r.f, r.path
	if seg == nil {
		if tli == TimeLineID(s.durableTLI.Load()) && lsn >= LSN(s.durable.Load()) {
			return nil, nil // not written yet
		}
		return nil, &WALRemovedError{Segment: SegmentFileName(tli, key.no, segSize)}
	}
	avail := seg.durable.Load()
	if limit >= 0 {
		avail = min(limit, seg.size)
	}
	off := int64(lsn.SegmentOffset(segSize))
	if off >= avail {
		return nil, nil
	}
	n := min(int64(len(p)), avail-off)
	switch {
	case mem != nil:
		if view {
			return mem[off : off+n : off+n], nil
		}
		return p[:copy(p[:n], mem[off:off+n])], nil
	case z != nil:
		i := int(off / ZFrameSize)
		fk := frameKey{key, i}
		frame, ok := s.cache.get(fk)
		if !ok {
			var err error
			if frame, err = z.frame(f, filepath.Base(path), i); err != nil {
				return nil, err
			}
			s.cache.put(fk, frame)
		}
		fo := off - int64(i)*ZFrameSize
		n = min(n, int64(len(frame))-fo)
		if view {
			return frame[fo : fo+n : fo+n], nil
		}
		return p[:copy(p[:n], frame[fo:fo+n])], nil
	}
	m, err := f.ReadAt(p[:n], off)
	if err != nil {
		return p[:m], fmt.Errorf("read segment %s at %s: %w", path, lsn, err)
	}
	return p[:m], nil
}

// OldestLSN returns the first position held on timeline tli, or false when
// the store holds nothing of it.
func (s *Store) OldestLSN(tli TimeLineID) (LSN, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var oldest uint64
	found := false
	for k := range s.segs {
		if k.tli == tli && (!found || k.no < oldest) {
			oldest, found = k.no, true
		}
	}
	return LSN(oldest * s.meta.SegmentSize), found
}

// History returns the stored history file of timeline tli.
func (s *Store) History(tli TimeLineID) ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.history[tli]
	return b, ok
}

// RemoveBefore deletes complete segments that end at or before lsn, on every
// timeline, and returns how many it removed. The writer's segment is never
// removed.
func (s *Store) RemoveBefore(lsn LSN) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.hasMeta {
		return 0, nil
	}
	segSize := s.meta.SegmentSize
	removed := 0
	for k, seg := range s.segs {
		if !seg.complete || (k.no+1)*segSize > uint64(lsn) {
			continue
		}
		if err := s.fs.Remove(seg.path); err != nil {
			return removed, fmt.Errorf("remove segment %s: %w", seg.path, err)
		}
		seg.f.Close()
		delete(s.segs, k)
		removed++
	}
	if removed > 0 {
		if err := s.fs.SyncDir(s.walDir()); err != nil {
			return removed, fmt.Errorf("sync %s: %w", s.walDir(), err)
		}
	}
	return removed, nil
}

func (s *Store) segmentSize() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.meta.SegmentSize
}

// SegmentInfo describes one held segment for retention.
type SegmentInfo struct {
	Timeline TimeLineID
	Start    LSN
	Complete bool
	Bytes    int64     // on disk
	ModTime  time.Time // when it was last written (completion, for a complete one)
}

// SegmentInfos lists the held segments, oldest first.
func (s *Store) SegmentInfos() []SegmentInfo {
	type snap struct {
		info SegmentInfo
		f    vfs.File
	}
	s.mu.Lock()
	segSize := s.meta.SegmentSize
	snaps := make([]snap, 0, len(s.segs))
	for _, seg := range s.segs {
		snaps = append(snaps, snap{SegmentInfo{Timeline: seg.key.tli, Start: LSN(seg.key.no * segSize),
			Complete: seg.complete, Bytes: seg.durable.Load()}, seg.f})
	}
	s.mu.Unlock()
	out := make([]SegmentInfo, 0, len(snaps))
	for _, sn := range snaps {
		if st, err := sn.f.Stat(); err == nil {
			sn.info.Bytes, sn.info.ModTime = st.Size(), st.ModTime()
		}
		out = append(out, sn.info)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Start != out[j].Start {
			return out[i].Start < out[j].Start
		}
		return out[i].Timeline < out[j].Timeline
	})
	return out
}
