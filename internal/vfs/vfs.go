package vfs

import (
	"io"
	"os"
	"path/filepath"
)

// FS is the part of package os the store uses. Paths are as for package os.
// Implementations are safe for concurrent use.
//
// Errors are *fs.PathError or *os.LinkError carrying the path, and match
// fs.ErrNotExist, fs.ErrExist and fs.ErrClosed with errors.Is as package
// os's do.
type FS interface {
	// OpenFile opens name with os.O_* flags: O_RDONLY, O_WRONLY, O_RDWR,
	// O_CREATE, O_EXCL, O_TRUNC, O_APPEND, O_SYNC.
	OpenFile(name string, flag int, perm os.FileMode) (File, error)
	// Open opens name read-only.
	Open(name string) (File, error)
	ReadFile(name string) ([]byte, error)
	// ReadDir lists a directory sorted by name, as os.ReadDir does.
	ReadDir(name string) ([]os.DirEntry, error)
	MkdirAll(path string, perm os.FileMode) error
	// Rename replaces newpath, if it exists, atomically.
	Rename(oldpath, newpath string) error
	Remove(name string) error
	Stat(name string) (os.FileInfo, error)
	// SyncDir makes the names created, renamed or removed in dir durable.
	// Syncing a file makes its content durable but not its name.
	SyncDir(dir string) error
}

// File is an open file. ReadAt, WriteAt, Stat and Sync may be called
// concurrently; Read and Write share the file's offset and must not be.
// After Close every method fails with an error matching fs.ErrClosed.
type File interface {
	io.Reader
	io.ReaderAt
	io.Writer
	io.WriterAt
	io.Closer
	Name() string
	Stat() (os.FileInfo, error)
	Truncate(size int64) error
	// Sync makes the file's content and size durable (fsync).
	Sync() error
	// Datasync makes the file's content durable, and its size when that
	// changed, without the rest of its metadata (fdatasync). It is what
	// the WAL hot path calls on its preallocated segments.
	Datasync() error
}

// WriteFileAtomic replaces path with b so that after a crash the file holds
// either the old or the new content: write a temp file (path+".tmp"), fsync,
// rename, fsync the directory. Recovery removes *.tmp leftovers. On error the
// temp file is removed: a half-written one on a full disk would hold on to
// the very space the next attempt needs. Errors carry the path they are
// about.
func WriteFileAtomic(fsys FS, path string, b []byte) (err error) {
	tmp := path + ".tmp"
	f, err := fsys.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			fsys.Remove(tmp)
		}
	}()
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := fsys.Rename(tmp, path); err != nil {
		return err
	}
	return fsys.SyncDir(filepath.Dir(path))
}
