package vfs

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"
)

// CrashFS is an in-memory FS that knows, for every file and directory, what
// a power loss would keep, so that Crash can return a state a power loss at
// that instant could leave on disk.
//
// Its durability rules are those of a strict POSIX file system, stricter
// than ext4 or xfs in practice so that a missing fsync shows:
//   - File.Sync and File.Datasync make the file's content and size durable,
//     not its name.
//   - SyncDir(d) makes durable the names created, renamed and removed in d.
//     MkdirAll creates names in the parent like any other, so a new
//     directory needs SyncDir of its parent too.
//   - A rename is one operation: it survives whole or not at all. Between
//     two directories it is durable once both are synced.
//   - What survives of a directory is a prefix of its history: while a
//     rename out of it waits for the other directory's sync, SyncDir of
//     this one does not make its later operations durable either.
//   - Removed and renamed-over files stay readable through open handles.
//
// A CrashFS is safe for concurrent use. Directories cannot be renamed, and a
// directory cannot be opened as a file; nothing needs either yet.
type CrashFS struct {
	mu   sync.Mutex
	root *inode
	// log holds, oldest first, the namespace operations that are not yet
	// durable; see settle for when one leaves it.
	log   []*nsOp
	fault func(op Op, path string) error
}

// inode is a file or directory, independent of its names.
type inode struct {
	isDir   bool
	mode    os.FileMode
	modTime time.Time

	// A directory's current entries and its durable ones: those in the
	// last synced state plus the settled operations of the log.
	children map[string]*inode
	synced   map[string]*inode

	// A file's current content, its durable content, and the writes and
	// truncations since the last sync, oldest first: applied to durable in
	// order, they give data.
	data    []byte
	durable []byte
	pending []fileOp
}

// nsOp is one namespace operation: a create, remove or rename, made of
// edits to at most two directories that survive a crash together.
type nsOp struct {
	edits []edit
	dirs  []*inode // the directories edits touch, without duplicates
	// unsynced lists the directories of dirs that were not synced since.
	unsynced []*inode
}

// edit sets dir's entry name to ino, or removes it when ino is nil.
type edit struct {
	dir  *inode
	name string
	ino  *inode
}

var _ FS = (*CrashFS)(nil)

// NewCrashFS returns an empty CrashFS: a root directory, durable.
func NewCrashFS() *CrashFS {
	return &CrashFS{root: newDir(0o755, time.Now())}
}

func newDir(mode os.FileMode, t time.Time) *inode {
	return &inode{isDir: true, mode: mode | fs.ModeDir, modTime: t,
		children: make(map[string]*inode), synced: make(map[string]*inode)}
}

// SetFault installs a hook called before every operation with the
// operation and the path it is on (the old path for a rename; the file's
// name for File methods). A non-nil error fails the operation, which then
// changes nothing, and is returned wrapped with the path: return
// syscall.ENOSPC to simulate a full disk. The hook runs without the
// CrashFS's lock held, so it may call Crash to capture the state just before
// the operation (between a snapshot's write and its rename, say). It may be
// called concurrently. nil removes it.
func (c *CrashFS) SetFault(hook func(op Op, path string) error) {
	c.mu.Lock()
	c.fault = hook
	c.mu.Unlock()
}

// fail runs the fault hook, if any, for op on path.
func (c *CrashFS) fail(op Op, path string) error {
	c.mu.Lock()
	hook := c.fault
	c.mu.Unlock()
	if hook == nil {
		return nil
	}
	if err := hook(op, path); err != nil {
		return &fs.PathError{Op: op.String(), Path: path, Err: err}
	}
	return nil
}

// split turns a path into its elements below the root. Relative paths are
// taken from the root: there is no working directory.
func split(name string) ([]string, error) {
	p := strings.TrimPrefix(filepath.ToSlash(filepath.Clean(name)), "/")
	if p == "." || p == "" {
		return nil, nil
	}
	parts := strings.Split(p, "/")
	if parts[0] == ".." {
		return nil, fs.ErrInvalid
	}
	return parts, nil
}

// walk returns the inode at parts. Called with c.mu held.
func (c *CrashFS) walk(parts []string) (*inode, error) {
	n := c.root
	for _, p := range parts {
		if !n.isDir {
			return nil, syscall.ENOTDIR
		}
		if n = n.children[p]; n == nil {
			return nil, fs.ErrNotExist
		}
	}
	return n, nil
}

// lookup returns the inode at name. Called with c.mu held.
func (c *CrashFS) lookup(name string) (*inode, error) {
	parts, err := split(name)
	if err != nil {
		return nil, err
	}
	return c.walk(parts)
}

// parent returns the directory holding name and name's last element; the
// root has none. Called with c.mu held.
func (c *CrashFS) parent(name string) (*inode, string, error) {
	parts, err := split(name)
	if err != nil {
		return nil, "", err
	}
	if len(parts) == 0 {
		return nil, "", syscall.EBUSY
	}
	dir, err := c.walk(parts[:len(parts)-1])
	if err != nil {
		return nil, "", err
	}
	if !dir.isDir {
		return nil, "", syscall.ENOTDIR
	}
	return dir, parts[len(parts)-1], nil
}

// record applies a namespace operation and logs it until it is durable.
// Called with c.mu held.
func (c *CrashFS) record(edits ...edit) {
	op := &nsOp{edits: edits}
	for _, e := range edits {
		if e.ino == nil {
			delete(e.dir.children, e.name)
		} else {
			e.dir.children[e.name] = e.ino
		}
		if !slices.Contains(op.dirs, e.dir) {
			op.dirs = append(op.dirs, e.dir)
		}
		e.dir.modTime = time.Now()
	}
	op.unsynced = slices.Clone(op.dirs)
	c.log = append(c.log, op)
}

// settle moves the durable operations out of the log into the directories'
// synced entries. An operation is durable when all its directories were
// synced after it and every older operation in those directories is
// durable: each directory's durable state is then a prefix of its history,
// which a crash builds on. Called with c.mu held.
func (c *CrashFS) settle() {
	blocked := make(map[*inode]bool)
	kept := c.log[:0]
	for _, op := range c.log {
		if len(op.unsynced) == 0 && !slices.ContainsFunc(op.dirs, func(d *inode) bool { return blocked[d] }) {
			op.apply(func(d *inode) map[string]*inode { return d.synced })
			continue
		}
		for _, d := range op.dirs {
			blocked[d] = true
		}
		kept = append(kept, op)
	}
	clear(c.log[len(kept):])
	c.log = kept
}

// apply makes op's edits to the entries entries returns for a directory.
func (op *nsOp) apply(entries func(*inode) map[string]*inode) {
	for _, e := range op.edits {
		if e.ino == nil {
			delete(entries(e.dir), e.name)
		} else {
			entries(e.dir)[e.name] = e.ino
		}
	}
}

func (c *CrashFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	if err := c.fail(OpOpen, name); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.open(name, flag, perm)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	f := &memFile{fs: c, ino: n, name: name,
		read:   flag&(os.O_WRONLY|os.O_RDWR) != os.O_WRONLY,
		write:  flag&(os.O_WRONLY|os.O_RDWR) != 0,
		append: flag&os.O_APPEND != 0,
		sync:   flag&os.O_SYNC != 0,
	}
	if flag&os.O_TRUNC != 0 && f.write && len(n.data) > 0 {
		n.change(fileOp{truncate: true}, time.Now())
	}
	return f, nil
}

// open finds or creates the file to open. Called with c.mu held.
func (c *CrashFS) open(name string, flag int, perm os.FileMode) (*inode, error) {
	dir, base, err := c.parent(name)
	if errors.Is(err, syscall.EBUSY) {
		return nil, syscall.EISDIR // the root
	}
	if err != nil {
		return nil, err
	}
	n := dir.children[base]
	switch {
	case n == nil && flag&os.O_CREATE == 0:
		return nil, fs.ErrNotExist
	case n == nil:
		n = &inode{mode: perm &^ fs.ModeType, modTime: time.Now()}
		c.record(edit{dir, base, n})
	case flag&(os.O_CREATE|os.O_EXCL) == os.O_CREATE|os.O_EXCL:
		return nil, fs.ErrExist
	case n.isDir:
		return nil, syscall.EISDIR
	}
	return n, nil
}

func (c *CrashFS) Open(name string) (File, error) { return c.OpenFile(name, os.O_RDONLY, 0) }

func (c *CrashFS) ReadFile(name string) ([]byte, error) {
	if err := c.fail(OpOpen, name); err != nil {
		return nil, err
	}
	if err := c.fail(OpRead, name); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.lookup(name)
	if err == nil && n.isDir {
		err = syscall.EISDIR
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	return slices.Clone(n.data), nil
}

func (c *CrashFS) ReadDir(name string) ([]os.DirEntry, error) {
	if err := c.fail(OpReadDir, name); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.lookup(name)
	if err == nil && !n.isDir {
		err = syscall.ENOTDIR
	}
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: name, Err: err}
	}
	names := sortedNames(n.children)
	out := make([]os.DirEntry, len(names))
	for i, base := range names {
		out[i] = fs.FileInfoToDirEntry(n.children[base].info(base))
	}
	return out, nil
}

func (c *CrashFS) MkdirAll(path string, perm os.FileMode) error {
	if err := c.fail(OpMkdirAll, path); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	parts, err := split(path)
	if err != nil {
		return &fs.PathError{Op: "mkdir", Path: path, Err: err}
	}
	n := c.root
	for _, p := range parts {
		next := n.children[p]
		if next == nil {
			next = newDir(perm&fs.ModePerm, time.Now())
			c.record(edit{n, p, next})
		} else if !next.isDir {
			return &fs.PathError{Op: "mkdir", Path: path, Err: syscall.ENOTDIR}
		}
		n = next
	}
	return nil
}

func (c *CrashFS) Rename(oldpath, newpath string) error {
	if err := c.fail(OpRename, oldpath); err != nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: errors.Unwrap(err)}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.rename(oldpath, newpath); err != nil {
		return &os.LinkError{Op: "rename", Old: oldpath, New: newpath, Err: err}
	}
	return nil
}

// rename is Rename with c.mu held.
func (c *CrashFS) rename(oldpath, newpath string) error {
	odir, obase, err := c.parent(oldpath)
	if err != nil {
		return err
	}
	n := odir.children[obase]
	if n == nil {
		return fs.ErrNotExist
	}
	if n.isDir {
		return errors.New("crashfs: renaming a directory is not supported")
	}
	ndir, nbase, err := c.parent(newpath)
	if err != nil {
		return err
	}
	switch old := ndir.children[nbase]; {
	case old == n:
		return nil // the same file: rename(2) does nothing
	case old != nil && old.isDir:
		return syscall.EISDIR
	}
	c.record(edit{odir, obase, nil}, edit{ndir, nbase, n})
	return nil
}

func (c *CrashFS) Remove(name string) error {
	if err := c.fail(OpRemove, name); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	dir, base, err := c.parent(name)
	var n *inode
	if err == nil {
		if n = dir.children[base]; n == nil {
			err = fs.ErrNotExist
		} else if n.isDir && len(n.children) > 0 {
			err = syscall.ENOTEMPTY
		}
	}
	if err != nil {
		return &fs.PathError{Op: "remove", Path: name, Err: err}
	}
	c.record(edit{dir, base, nil})
	return nil
}

func (c *CrashFS) Stat(name string) (os.FileInfo, error) {
	if err := c.fail(OpStat, name); err != nil {
		return nil, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.lookup(name)
	if err != nil {
		return nil, &fs.PathError{Op: "stat", Path: name, Err: err}
	}
	return n.info(filepath.Base(name)), nil
}

func (c *CrashFS) SyncDir(dir string) error {
	if err := c.fail(OpSyncDir, dir); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	n, err := c.lookup(dir)
	if err == nil && !n.isDir {
		err = syscall.ENOTDIR
	}
	if err != nil {
		return &fs.PathError{Op: "syncdir", Path: dir, Err: err}
	}
	for _, op := range c.log {
		op.unsynced = slices.DeleteFunc(op.unsynced, func(d *inode) bool { return d == n })
	}
	c.settle()
	return nil
}

func sortedNames(m map[string]*inode) []string {
	names := make([]string, 0, len(m))
	for name := range m {
		names = append(names, name)
	}
	slices.Sort(names)
	return names
}

func (n *inode) info(name string) os.FileInfo {
	return fileInfo{name: name, size: int64(len(n.data)), mode: n.mode, modTime: n.modTime}
}

type fileInfo struct {
	name    string
	size    int64
	mode    fs.FileMode
	modTime time.Time
}

func (fi fileInfo) Name() string       { return fi.name }
func (fi fileInfo) Size() int64        { return fi.size }
func (fi fileInfo) Mode() fs.FileMode  { return fi.mode }
func (fi fileInfo) ModTime() time.Time { return fi.modTime }
func (fi fileInfo) IsDir() bool        { return fi.mode.IsDir() }
func (fi fileInfo) Sys() any           { return nil }
