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
// prepared in the background while the current one fills (the spare): filled
// under spareName, fdatasynced, renamed to the next segment's .partial name
// and the directory fsynced, all before the writer needs it. The writer then
// opens it with no directory fsync on its path: on a busy disk a directory
// fsync is a journal commit, which waits for other files' newly allocated
// blocks (56-67 ms each at a relay's switch in the cross-region benchmark;
// BenchmarkSegmentSwitch times the crossing). Only when the spare is not ready
// or was named for another segment (the first segment, a new timeline, a full
// disk) is a file filled or renamed on the writer's path.
//
// A prepared spare is an all-zero .partial beside the writer's: recovery
// removes it (see dropUnusedPartials), and it holds no WAL.

// spareName is where the spare is filled. Recovery removes it with the other
// *.tmp leftovers: an interrupted preparation may have left it short.
const spareName = "next-segment.tmp"

// spareResult is the outcome of preparing a spare: on success, path is the
// zero-filled file, named and made durable for the segment it was made for.
type spareResult struct {
	path string
	err  error
}

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

// startSpare begins preparing the file of segment next unless that is under
// way or done. Writer only.
func (s *Store) startSpare(next segKey) {
	if s.spare != nil {
		return
	}
	ch := make(chan spareResult, 1)
	s.spare = ch
	dir, size := s.walDir(), int64(s.segmentSize())
	tmp := filepath.Join(dir, spareName)
	path := filepath.Join(dir, SegmentFileName(next.tli, next.no, uint64(size))+PartialSuffix)
	prepare := func() {
		f, err := zeroFill(s.fs, tmp, size)
		if err == nil {
			err = f.Close()
		}
		if err == nil {
			err = s.fs.Rename(tmp, path)
		}
		if err == nil {
			err = s.fs.SyncDir(dir)
		}
		ch <- spareResult{path: path, err: err}
		// After the file, which the writer waits for at the crossing.
		s.prepareMemBuf(next, uint64(size))
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

// openSegmentFile returns the zero-filled file for segment key at path: the
// spare, renamed into place if it was made for another segment, or, when no
// spare could be prepared, one filled now (whose error, a full disk say, is
// the caller's). durable reports that the file's name is already durable; if
// not, the caller fsyncs the directory. It starts preparing the next spare.
// Writer only; s.mu unlocked.
func (s *Store) openSegmentFile(key segKey, path string) (f vfs.File, durable bool, err error) {
	if ch := s.spare; ch != nil {
		s.spare = nil
		if r := <-ch; r.err == nil {
			durable = r.path == path
			if !durable {
				if err := s.fs.Rename(r.path, path); err != nil {
					return nil, false, fmt.Errorf("rename spare segment file %s: %w", r.path, err)
				}
			}
			if f, err = s.fs.OpenFile(path, os.O_RDWR, 0); err != nil {
				return nil, false, err
			}
		} else {
			// Whichever step failed, the spare is not relied on (and
			// would hold on to space a full disk needs).
			s.fs.Remove(filepath.Join(s.walDir(), spareName))
			if r.path != path {
				s.fs.Remove(r.path)
			}
		}
	}
	if f == nil {
		durable = false
		if f, err = zeroFill(s.fs, path, int64(s.segmentSize())); err != nil {
			return nil, false, err
		}
	}
	s.startSpare(segKey{key.tli, key.no + 1})
	return f, durable, nil
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
