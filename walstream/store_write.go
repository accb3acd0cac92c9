package walstream

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"syscall"

	"github.com/walrelay/walrelay/internal/vfs"
)

// The methods in this file belong to the store's single writer (the upstream
// client); they must not be called concurrently with each other.

// WriteEnd returns the timeline and end of what has been written, which is
// where the upstream stream must resume. Zero when the store is empty.
func (s *Store) WriteEnd() (TimeLineID, LSN) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.writeTLI, s.writeEnd
}

// StartAt sets where an empty store begins: a segment boundary, since
// children always ask for WAL from the start of a segment.
func (s *Store) StartAt(tli TimeLineID, lsn LSN) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.hasMeta {
		return fmt.Errorf("start store at %s: identity not bound", lsn)
	}
	if len(s.segs) != 0 {
		return fmt.Errorf("start store at %s: store already holds WAL up to %s", lsn, s.writeEnd)
	}
	if lsn.SegmentOffset(s.meta.SegmentSize) != 0 {
		return fmt.Errorf("start store at %s: not a segment boundary", lsn)
	}
	if tli == 0 {
		return fmt.Errorf("start store at %s: timeline 0", lsn)
	}
	s.writeTLI, s.writeEnd = tli, lsn
	s.durable.Store(uint64(lsn))
	s.durableTLI.Store(uint32(tli))
	return nil
}

// SwitchTimeline ends the current timeline at switchPoint and continues on
// tli from the start of the segment holding switchPoint, in a new file
// keyed by the new timeline (as PostgreSQL's walreceiver does). WAL the store
// holds beyond switchPoint on the old timeline stays in the old timeline's
// files and is never read as part of the new one.
func (s *Store) SwitchTimeline(tli TimeLineID, switchPoint LSN) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if tli <= s.writeTLI {
		return fmt.Errorf("switch to timeline %d: store is on timeline %d", tli, s.writeTLI)
	}
	if switchPoint > s.writeEnd {
		return fmt.Errorf("switch to timeline %d at %s: store ends at %s on timeline %d", tli, switchPoint, s.writeEnd, s.writeTLI)
	}
	if w := s.writer; w != nil {
		if err := s.flush(w); err != nil {
			return err
		}
		if err := w.f.Datasync(); err != nil {
			return &SyncError{fmt.Errorf("sync segment %s: %w", w.path, err)}
		}
		w.durable.Store(w.size)
		s.writer = nil
	}
	s.writeTLI, s.writeEnd = tli, switchPoint.SegmentStart(s.meta.SegmentSize)
	s.durable.Store(uint64(s.writeEnd))
	s.durableTLI.Store(uint32(tli))
	s.notify.broadcast()
	return nil
}

// Write appends WAL received from upstream at position lsn. Bytes before the
// write end are checked against what the store holds (an upstream resending
// them must agree); a gap is an error. The bytes become visible to readers
// only after Sync.
func (s *Store) Write(tli TimeLineID, lsn LSN, data []byte) error {
	if tli != s.writeTLI {
		return fmt.Errorf("write at %s on timeline %d: store is on timeline %d", lsn, tli, s.writeTLI)
	}
	if lsn > s.writeEnd {
		return fmt.Errorf("write at %s: gap after store end %s", lsn, s.writeEnd)
	}
	if lsn < s.writeEnd {
		skip := uint64(s.writeEnd - lsn)
		if skip > uint64(len(data)) {
			skip = uint64(len(data))
		}
		if err := s.verifyHeld(tli, lsn, data[:skip]); err != nil {
			return err
		}
		data, lsn = data[skip:], lsn+LSN(skip)
	}
	segSize := s.meta.SegmentSize
	for len(data) > 0 {
		if w := s.writer; w != nil && uint64(w.size) == segSize {
			// A full segment whose completion failed (a full disk can
			// refuse the rename): finish it before starting the next.
			if err := s.finishSegment(w); err != nil {
				return err
			}
		}
		if s.writer == nil {
			if err := s.newSegment(tli, lsn.SegmentNo(segSize)); err != nil {
				return err
			}
		}
		seg := s.writer
		off := lsn.SegmentOffset(segSize)
		n := min(uint64(len(data)), segSize-off)
		// A zero-filled segment's file is written from its memory copy
		// once per sync (flush), in one piece instead of one per message;
		// one that grows is written as it comes, so that a full disk shows
		// here.
		if !seg.filled || seg.mem == nil {
			if _, err := seg.f.WriteAt(data[:n], int64(off)); err != nil {
				return fmt.Errorf("write segment %s at %s: %w", seg.path, lsn, err)
			}
			seg.flushed = int64(off + n)
		}
		s.mu.Lock()
		if seg.mem != nil {
			copy(seg.mem[off:], data[:n])
		}
		s.writeEnd = lsn + LSN(n)
		s.mu.Unlock()
		seg.size = int64(off + n)
		data, lsn = data[n:], lsn+LSN(n)
		if uint64(seg.size) == segSize {
			if err := s.finishSegment(seg); err != nil {
				return err
			}
		}
	}
	return nil
}

// flush writes what the segment's memory copy holds beyond its file.
func (s *Store) flush(seg *segment) error {
	if seg.flushed >= seg.size {
		return nil
	}
	// The writer's segment is in the memory tail, and only the writer
	// changes these bytes: no lock needed to read them.
	if _, err := seg.f.WriteAt(seg.mem[seg.flushed:seg.size], seg.flushed); err != nil {
		return fmt.Errorf("write segment %s at offset %d: %w", seg.path, seg.flushed, err)
	}
	seg.flushed = seg.size
	return nil
}

// finishSegment makes a full segment durable and gives it its final name.
func (s *Store) finishSegment(seg *segment) error {
	if err := s.flush(seg); err != nil {
		return err
	}
	if err := seg.f.Datasync(); err != nil {
		return &SyncError{fmt.Errorf("sync segment %s: %w", seg.path, err)}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	// No directory fsync for the rename here, on the writer's path: the
	// segment's bytes are durable under its .partial name, which recovery
	// completes the same way, and the next directory fsync (the spare's,
	// moments later) makes the new name durable too.
	return s.completeSegment(seg, false)
}

// SyncError is a failed fsync of WAL. After one the kernel may already have
// dropped the dirty pages, so what is on disk is unknown until the store is
// opened again and recovered; retrying the fsync could report success for
// lost data (PostgreSQL PANICs for the same reason). It is never retried.
type SyncError struct{ err error }

func (e *SyncError) Error() string { return e.err.Error() }
func (e *SyncError) Unwrap() error { return e.err }

// IsNoSpace reports whether err is the store running out of disk space (or
// quota) before anything was published: nothing is lost and writing can
// resume once space returns.
func IsNoSpace(err error) bool {
	var se *SyncError
	if errors.As(err, &se) {
		return false
	}
	return errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT)
}

// verifyHeld checks bytes an upstream sent again against the store's copy.
func (s *Store) verifyHeld(tli TimeLineID, lsn LSN, data []byte) error {
	have := make([]byte, len(data))
	for off := 0; off < len(data); {
		n, err := s.readAt(tli, lsn+LSN(off), have[off:], int64(s.meta.SegmentSize))
		if err != nil {
			return fmt.Errorf("verify resent WAL at %s: %w", lsn+LSN(off), err)
		}
		off += n
	}
	if !bytes.Equal(have, data) {
		return fmt.Errorf("upstream resent WAL at %s that differs from the store's copy", lsn)
	}
	return nil
}

// Sync makes everything written durable and publishes the new durable end to
// readers. It returns that end.
func (s *Store) Sync() (LSN, error) {
	if seg := s.writer; seg != nil && seg.durable.Load() != seg.size {
		if err := s.flush(seg); err != nil {
			return LSN(s.durable.Load()), err
		}
		if err := seg.f.Datasync(); err != nil {
			return LSN(s.durable.Load()), &SyncError{fmt.Errorf("sync segment %s: %w", seg.path, err)}
		}
		seg.durable.Store(seg.size)
	}
	s.mu.Lock()
	end := s.writeEnd
	s.mu.Unlock()
	if LSN(s.durable.Load()) != end {
		s.durable.Store(uint64(end))
		s.durableTLI.Store(uint32(s.writeTLI))
		s.notify.broadcast()
	}
	return end, nil
}

// newSegment creates the .partial file for segment no and makes its name
// durable. Called with s.mu unlocked.
func (s *Store) newSegment(tli TimeLineID, no uint64) error {
	name := SegmentFileName(tli, no, s.meta.SegmentSize) + PartialSuffix
	path := filepath.Join(s.walDir(), name)
	// A full disk shows here, before any WAL is written into the segment,
	// so a relay stops at a segment boundary instead of inside one.
	key := segKey{tli, no}
	f, durable, err := s.openSegmentFile(key, path)
	if err != nil {
		return fmt.Errorf("create segment %s: %w", name, err)
	}
	if !durable {
		if err := s.fs.SyncDir(s.walDir()); err != nil {
			f.Close()
			return fmt.Errorf("sync %s: %w", s.walDir(), err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	buf := s.takeMemBuf(key)
	seg := &segment{key: key, f: f, path: path, mem: buf.b, buf: buf, filled: true}
	s.segs[seg.key] = seg
	s.writer = seg
	s.memSegs = append(s.memSegs, seg)
	// Keep at most the configured tail in memory, but always the writer's.
	keep := max(1, int((s.tail+s.meta.SegmentSize-1)/s.meta.SegmentSize))
	for len(s.memSegs) > keep {
		old := s.memSegs[0]
		s.retireMemBuf(old.buf)
		old.mem, old.buf = nil, nil
		s.memSegs = s.memSegs[1:]
	}
	return nil
}

// completeSegment gives a full, fsynced segment its final name, durably if
// syncDir. Called with s.mu held.
func (s *Store) completeSegment(seg *segment, syncDir bool) error {
	final := filepath.Join(s.walDir(), SegmentFileName(seg.key.tli, seg.key.no, s.meta.SegmentSize))
	if err := s.fs.Rename(seg.path, final); err != nil {
		return fmt.Errorf("rename %s: %w", seg.path, err)
	}
	seg.path = final // a retry after a failed directory sync renames in place
	if syncDir {
		if err := s.fs.SyncDir(s.walDir()); err != nil {
			return fmt.Errorf("sync %s: %w", s.walDir(), err)
		}
	}
	seg.complete = true
	seg.durable.Store(seg.size)
	if s.writer == seg {
		s.writer = nil
	}
	return nil
}

// WriteHistory stores a timeline history file byte for byte.
func (s *Store) WriteHistory(tli TimeLineID, content []byte) error {
	s.mu.Lock()
	have, ok := s.history[tli]
	s.mu.Unlock()
	if ok && bytes.Equal(have, content) {
		return nil
	}
	name := HistoryFileName(tli)
	if err := vfs.WriteFileAtomic(s.fs, filepath.Join(s.walDir(), name), content); err != nil {
		return fmt.Errorf("write history file %s: %w", name, err)
	}
	s.mu.Lock()
	s.history[tli] = bytes.Clone(content)
	s.mu.Unlock()
	return nil
}

// InstallSegment adds a complete segment behind the write end that the
// store does not hold (read-through backfill). The bytes are checked
// against the store's identity, written to a temp file, fsynced and renamed
// into place; the segment is readable when this returns.
func (s *Store) InstallSegment(tli TimeLineID, no uint64, data []byte) error {
	s.mu.Lock()
	id, segSize := s.meta.Identity, s.meta.SegmentSize
	_, exists := s.segs[segKey{tli, no}]
	writeEnd := s.writeEnd
	s.mu.Unlock()
	name := SegmentFileName(tli, no, segSize)
	if uint64(len(data)) != segSize {
		return fmt.Errorf("install segment %s: %d bytes, want %d", name, len(data), segSize)
	}
	if exists {
		return nil
	}
	if (no+1)*segSize > uint64(writeEnd) {
		return fmt.Errorf("install segment %s: not behind the store's write end %s", name, writeEnd)
	}
	// After an XLOG_SWITCH record (pg_switch_wal, the end of a base
	// backup, archive_timeout) the rest of a segment is zeros: valid pages
	// followed by nothing but zeros is a complete segment.
	if valid := s.validPrefix(data, LSN(no*segSize)); valid != len(data) && (valid == 0 || !allZero(data[valid:])) {
		return fmt.Errorf("install segment %s: page at offset %d is not valid WAL of system %d", name, valid, id.SystemID)
	}
	path := filepath.Join(s.walDir(), name)
	if err := vfs.WriteFileAtomic(s.fs, path, data); err != nil {
		return fmt.Errorf("install segment %s: %w", name, err)
	}
	f, err := s.fs.Open(path)
	if err != nil {
		return fmt.Errorf("install segment %s: %w", name, err)
	}
	seg := &segment{key: segKey{tli, no}, f: f, path: path, size: int64(segSize), complete: true}
	seg.durable.Store(int64(segSize))
	s.mu.Lock()
	s.segs[seg.key] = seg
	s.mu.Unlock()
	return nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
