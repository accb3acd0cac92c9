package vfs

import (
	"io/fs"
	"os"
	"syscall"
)

// datasync is fdatasync(2). Through SyscallConn rather than Fd, so that the
// descriptor cannot be closed and reused under the call and the file keeps
// its non-blocking mode.
func datasync(f *os.File) error {
	rc, err := f.SyscallConn()
	if err != nil {
		return &fs.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
	}
	var serr error
	err = rc.Control(func(fd uintptr) {
		for {
			serr = syscall.Fdatasync(int(fd))
			if serr != syscall.EINTR {
				return
			}
		}
	})
	if err != nil {
		// Control fails only on a file that is closed or being closed.
		return &fs.PathError{Op: "fdatasync", Path: f.Name(), Err: fs.ErrClosed}
	}
	if serr != nil {
		return &fs.PathError{Op: "fdatasync", Path: f.Name(), Err: serr}
	}
	return nil
}
