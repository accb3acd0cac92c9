package walstream

import (
	"fmt"
	"github.com/walrelay/walrelay/internal/vfs"
	"os"
	"path/filepath"
)

// Segment files are created full size and zero-filled, as PostgreSQL creates
// its own (wal_init_zero): overwriting blocks that exist needs no block
// allocation or size change, so making WAL durable is an fdatasync of data
// alone. Zero-filling a segment writes 16 MB, so the next segment's file is
// prepared in the background while the current one fills (the spare) and
// taken by a rename when it is needed; only when it is not ready (the first
// segment, a full disk) is a file zero-filled on the writer's path.

// spareName is the prepared file. Recovery removes it with the other *.tmp
// leftovers: an interrupted preparation may have left it short.
const spareName = "next-segment.tmp"

// zeroChunk is how much is written per call while zero-filling.
const zeroChunk = 1 << 20

// zeroFill creates path (truncating it) as size zero bytes on disk, fdatasync
// done. On failure the file is removed: a half-filled file on a full disk
// would hold on to the space the next attempt needs.
func zeroFill(fsys vfs.FS, path string, size int64) (_ vfs.File, err error) {
	f, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			f.Close()
			fsys.Remove(path)
		}
	}()
	if err := zeroRange(f, 0, size); err != nil {
		return nil, err
	}
	if err := f.Datasync(); err != nil {
		return nil, err
	}
	return f, nil
}

// startSpare begins preparing the next segment's file unless that is under
// way or done. Writer only.
func (s *Store) startSpare() {
	if s.spare != nil {
		return
	}
	ch := make(chan error, 1)
	s.spare = ch
	path, size := filepath.Join(s.walDir(), spareName), int64(s.segmentSize())
	prepare := func() {
		f, err := zeroFill(s.fs, path, size)
		if err == nil {
			err = f.Close()
		}
		ch <- err
	}
	if s.inlineSpare {
		prepare()
		return
	}
	s.spareWG.Add(1)
	go func() {
		defer s.spareWG.Done()
		prepare()
	}()
}

// openSegmentFile returns the zero-filled file for a new segment at path:
// the spare renamed into place, or, when no spare could be prepared, one
// filled now (whose error, a full disk say, is the caller's). It starts
// preparing the next spare. Writer only; s.mu unlocked.
func (s *Store) openSegmentFile(path string) (vfs.File, error) {
	var f vfs.File
	if ch := s.spare; ch != nil {
		s.spare = nil
		if err := <-ch; err == nil {
			if err := s.fs.Rename(filepath.Join(s.walDir(), spareName), path); err != nil {
				return nil, fmt.Errorf("rename spare segment file: %w", err)
			}
			var err error
			if f, err = s.fs.OpenFile(path, os.O_RDWR, 0); err != nil {
				return nil, err
			}
		}
	}
	if f == nil {
		var err error
		if f, err = zeroFill(s.fs, path, int64(s.segmentSize())); err != nil {
			return nil, err
		}
	}
	s.startSpare()
	return f, nil
}

// zeroRange writes zeros over [from, to) of f.
func zeroRange(f vfs.File, from, to int64) error {
	zero := make([]byte, min(max(to-from, 0), zeroChunk))
	for off := from; off < to; off += int64(len(zero)) {
		if _, err := f.WriteAt(zero[:min(int64(len(zero)), to-off)], off); err != nil {
			return err
		}
	}
	return nil
}
