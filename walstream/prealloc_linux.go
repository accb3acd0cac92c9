package walstream

import (
	"errors"
	"os"
	"syscall"
)

const fallocKeepSize = 0x01 // FALLOC_FL_KEEP_SIZE

// preallocate reserves a segment's blocks without changing the file size,
// so appends do not allocate blocks one at a time (cheaper writes and
// fsyncs) and recovery still sees the written length. It also finds a full
// disk before any WAL is written into the segment, so a relay stops at a
// segment boundary instead of in the middle of one. A file system that
// cannot preallocate is not an error.
func preallocate(f *os.File, size int64) error {
	err := syscall.Fallocate(int(f.Fd()), fallocKeepSize, 0, size)
	if errors.Is(err, syscall.ENOSPC) || errors.Is(err, syscall.EDQUOT) {
		return &os.PathError{Op: "fallocate", Path: f.Name(), Err: err}
	}
	return nil
}
