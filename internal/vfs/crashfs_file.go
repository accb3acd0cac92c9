package vfs

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"
)

// fileOp is a write of data at off, or a truncation to size.
type fileOp struct {
	truncate bool
	off      int64 // write
	data     []byte
	size     int64 // truncate
}

// applyTo returns b changed by op. b's bytes beyond its length are never
// read, so that a file cut and extended again reads zeros there.
func (op fileOp) applyTo(b []byte) []byte {
	if op.truncate {
		return resize(b, op.size)
	}
	if end := op.off + int64(len(op.data)); end > int64(len(b)) {
		b = resize(b, end)
	}
	copy(b[op.off:], op.data)
	return b
}

func resize(b []byte, n int64) []byte {
	if n <= int64(len(b)) {
		return b[:n]
	}
	return append(b, make([]byte, n-int64(len(b)))...)
}

// change applies op to the file and keeps it until the next sync. Called
// with the CrashFS's lock held.
func (n *inode) change(op fileOp, now time.Time) {
	n.data = op.applyTo(n.data)
	n.pending = append(n.pending, op)
	n.modTime = now
}

// sync makes the file's content durable. Replaying the pending operations
// costs what they wrote, where copying data would cost the file's size on
// every fdatasync of a WAL segment. Called with the CrashFS's lock held.
func (n *inode) sync() {
	for _, op := range n.pending {
		n.durable = op.applyTo(n.durable)
	}
	n.pending = nil
}

// memFile is an open file of a CrashFS. Its fields other than the inode's
// are guarded by the CrashFS's lock too.
type memFile struct {
	fs     *CrashFS
	ino    *inode
	name   string
	read   bool
	write  bool
	append bool
	sync   bool
	off    int64
	closed bool
}

var errWriteAtAppend = errors.New("vfs: invalid use of WriteAt on file opened with O_APPEND")

// begin runs the fault hook and takes the CrashFS's lock, failing on a
// closed file. On success the caller unlocks.
func (f *memFile) begin(op Op) error {
	if err := f.fs.fail(op, f.name); err != nil {
		return err
	}
	f.fs.mu.Lock()
	if f.closed {
		f.fs.mu.Unlock()
		return &fs.PathError{Op: op.String(), Path: f.name, Err: fs.ErrClosed}
	}
	return nil
}

func (f *memFile) Name() string { return f.name }

func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.begin(OpRead); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	if off < 0 {
		return 0, &fs.PathError{Op: "readat", Path: f.name, Err: errors.New("negative offset")}
	}
	return f.readAt(p, off)
}

// readAt is ReadAt with the lock held.
func (f *memFile) readAt(p []byte, off int64) (int, error) {
	if !f.read {
		return 0, &fs.PathError{Op: "read", Path: f.name, Err: syscall.EBADF}
	}
	data := f.ino.data
	if off >= int64(len(data)) {
		if len(p) == 0 {
			return 0, nil
		}
		return 0, io.EOF
	}
	n := copy(p, data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (f *memFile) Read(p []byte) (int, error) {
	if err := f.begin(OpRead); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	n, err := f.readAt(p, f.off)
	f.off += int64(n)
	if n > 0 && err == io.EOF {
		err = nil // as os.File: EOF only when nothing was read
	}
	return n, err
}

func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.begin(OpWrite); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	if f.append {
		return 0, &fs.PathError{Op: "writeat", Path: f.name, Err: errWriteAtAppend}
	}
	if off < 0 {
		return 0, &fs.PathError{Op: "writeat", Path: f.name, Err: errors.New("negative offset")}
	}
	return f.writeAt(p, off)
}

// writeAt is WriteAt with the lock held.
func (f *memFile) writeAt(p []byte, off int64) (int, error) {
	if !f.write {
		return 0, &fs.PathError{Op: "write", Path: f.name, Err: syscall.EBADF}
	}
	if len(p) == 0 {
		return 0, nil
	}
	// The caller may reuse p; the crash model needs the bytes as written.
	f.ino.change(fileOp{off: off, data: append([]byte(nil), p...)}, time.Now())
	if f.sync {
		f.ino.sync()
	}
	return len(p), nil
}

func (f *memFile) Write(p []byte) (int, error) {
	if err := f.begin(OpWrite); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	if f.append {
		f.off = int64(len(f.ino.data))
	}
	n, err := f.writeAt(p, f.off)
	f.off += int64(n)
	return n, err
}

func (f *memFile) Truncate(size int64) error {
	if err := f.begin(OpTruncate); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	if size < 0 || !f.write {
		return &fs.PathError{Op: "truncate", Path: f.name, Err: syscall.EINVAL}
	}
	f.ino.change(fileOp{truncate: true, size: size}, time.Now())
	if f.sync {
		f.ino.sync()
	}
	return nil
}

func (f *memFile) Stat() (os.FileInfo, error) {
	if err := f.begin(OpStat); err != nil {
		return nil, err
	}
	defer f.fs.mu.Unlock()
	return f.ino.info(filepath.Base(f.name)), nil
}

// Sync and Datasync are alike: on Linux fdatasync makes the size durable
// too when it changed, and that is all of the metadata modelled.
func (f *memFile) Sync() error     { return f.doSync(OpSync) }
func (f *memFile) Datasync() error { return f.doSync(OpDatasync) }

func (f *memFile) doSync(op Op) error {
	if err := f.begin(op); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	f.ino.sync()
	return nil
}

// Close releases the handle. Like close(2) it makes nothing durable. A
// fault makes it fail but the handle is closed all the same.
func (f *memFile) Close() error {
	err := f.fs.fail(OpClose, f.name)
	f.fs.mu.Lock()
	defer f.fs.mu.Unlock()
	if f.closed {
		return &fs.PathError{Op: "close", Path: f.name, Err: fs.ErrClosed}
	}
	f.closed = true
	return err
}
