package walstream

import (
	"os"
	"syscall"
)

// datasync makes a segment's written bytes durable. Segments are zero-filled
// to their full size when created, so writes never change the file's size
// or allocate blocks and fdatasync has no metadata to journal: on ext4 it
// costs about half an fsync of a file that grows (measured in
// docs/performance.md).
func datasync(f *os.File) error {
	for {
		err := syscall.Fdatasync(int(f.Fd()))
		if err != syscall.EINTR {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}
