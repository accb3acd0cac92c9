package walstream

import (
	"context"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"time"

	"github.com/walrelay/walrelay/internal/vfs"
)

// RunCompactor compresses completed segments every interval until ctx
// ends (a no-op store option Compress is off).
func (s *Store) RunCompactor(ctx context.Context, interval time.Duration) error {
	if !s.compress {
		return nil
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	full := false
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		_, err := s.compactOnce(ctx)
		switch {
		case err != nil && IsNoSpace(err):
			// Once per episode, not every interval: the upstream client
			// already reports the full disk.
			if !full {
				s.log.Warn("compressing segments: out of space; retrying until space is freed", "err", err)
			}
			full = true
		case err != nil:
			s.log.Error("compressing segments", "err", err)
		default:
			full = false
		}
	}
}

// CompactOnce rewrites every completed raw segment as a compressed file and
// returns how many it did.
func (s *Store) CompactOnce() (int, error) { return s.compactOnce(context.Background()) }

// compactOnce is CompactOnce that stops between segments once ctx ends.
func (s *Store) compactOnce(ctx context.Context) (int, error) {
	s.mu.Lock()
	var todo []*segment
	for _, seg := range s.segs {
		if seg.complete && seg.z == nil {
			todo = append(todo, seg)
		}
	}
	s.mu.Unlock()
	done := 0
	for i, seg := range todo {
		if ctx.Err() != nil {
			return done, nil
		}
		// A segment costs about 80 ms of a core to compress, and every
		// relay of a chain completes the same segment at the same moment:
		// in one burst that was most of the tree's lag tail on a busy
		// machine (BenchmarkCrossRegion, paced TPC-B: standbys' p99 486 ms
		// with it, 128 ms with compression off). Resting between frames
		// keeps it to a quarter of a core, which still compresses 50 MB/s;
		// a backlog (a bulk load, a restart) is compressed at full speed.
		var pause func(time.Duration)
		if len(todo)-i <= compactBacklog {
			pause = func(took time.Duration) { rest(ctx, compactRest*took) }
		}
		if err := s.compactSegment(seg, pause); err != nil {
			return done, err
		}
		done++
	}
	return done, nil
}

// rest waits d or until ctx ends: a relay shutting down finishes the
// segment at full speed instead of resting through it.
func rest(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// compactRest is how many times as long as it worked the compactor rests
// between frames, and compactBacklog the segments waiting beyond which it
// does not rest.
const (
	compactRest    = 3
	compactBacklog = 4
)

func (s *Store) compactSegment(seg *segment, pause func(took time.Duration)) error {
	s.mu.Lock()
	path, f, closed, segSize, raw := seg.path, seg.f, s.closed, s.meta.SegmentSize, seg.mem
	if seg.buf != nil {
		pin := View{seg.buf}
		pin.m.views.Add(1)
		defer pin.Release()
	}
	s.mu.Unlock()
	if closed {
		return nil
	}
	// A segment just completed is still in the memory tail (its bytes never
	// change): compress it from there instead of reading the file back.
	if raw == nil {
		raw = make([]byte, segSize)
		if _, err := io.ReadFull(io.NewSectionReader(f, 0, int64(segSize)), raw); err != nil {
			return fmt.Errorf("compress %s: %w", path, err)
		}
	}
	zpath := path + CompressedSuffix
	if err := vfs.WriteFileAtomic(s.fs, zpath, encodeZSegmentPaced(raw, s.codec, pause)); err != nil {
		return fmt.Errorf("compress %s: %w", path, err)
	}
	zf, err := s.fs.Open(zpath)
	if err != nil {
		return err
	}
	z, err := openZSegment(zf, segSize)
	if err != nil {
		zf.Close()
		return fmt.Errorf("reopen %s: %w", zpath, err)
	}
	s.mu.Lock()
	if s.segs[seg.key] != seg || s.closed { // removed meanwhile
		s.mu.Unlock()
		zf.Close()
		return s.fs.Remove(zpath)
	}
	old := seg.f
	seg.f, seg.path, seg.z = zf, zpath, z
	s.mu.Unlock()
	old.Close()
	if err := s.fs.Remove(path); err != nil {
		return fmt.Errorf("remove %s: %w", path, err)
	}
	return s.fs.SyncDir(s.walDir())
}

// ReplaceSegment swaps a held segment for raw bytes fetched again (after
// corruption was found). The raw file is fsynced and renamed into place
// before the damaged one is dropped; the compactor compresses it again.
func (s *Store) ReplaceSegment(tli TimeLineID, no uint64, raw []byte) error {
	s.mu.Lock()
	segSize, id := s.meta.SegmentSize, s.meta.Identity
	seg := s.segs[segKey{tli, no}]
	complete := seg != nil && seg.complete
	s.mu.Unlock()
	name := SegmentFileName(tli, no, segSize)
	if seg == nil {
		return s.InstallSegment(tli, no, raw)
	}
	if uint64(len(raw)) != segSize || !complete {
		return fmt.Errorf("replace segment %s: %d bytes for a complete segment of %d", name, len(raw), segSize)
	}
	if valid := s.validPrefix(raw, LSN(no*segSize)); valid != len(raw) {
		return fmt.Errorf("replace segment %s: page at offset %d is not valid WAL of system %d", name, valid, id.SystemID)
	}
	path := filepath.Join(s.walDir(), name)
	if err := vfs.WriteFileAtomic(s.fs, path, raw); err != nil {
		return fmt.Errorf("replace segment %s: %w", name, err)
	}
	f, err := s.fs.Open(path)
	if err != nil {
		return err
	}
	s.mu.Lock()
	old, oldPath := seg.f, seg.path
	seg.f, seg.path, seg.z = f, path, nil
	s.mu.Unlock()
	s.cache.dropSegment(seg.key)
	old.Close()
	if strings.HasSuffix(oldPath, CompressedSuffix) {
		s.fs.Remove(oldPath)
	}
	return s.fs.SyncDir(s.walDir())
}
