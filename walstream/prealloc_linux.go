package walstream

import (
	"os"
	"syscall"
)

const fallocKeepSize = 0x01 // FALLOC_FL_KEEP_SIZE

// preallocate reserves a segment's blocks without changing the file size,
// so appends do not allocate blocks one at a time (cheaper writes and
// fsyncs) and recovery still sees the written length. Best effort.
func preallocate(f *os.File, size int64) {
	syscall.Fallocate(int(f.Fd()), fallocKeepSize, 0, size)
}
