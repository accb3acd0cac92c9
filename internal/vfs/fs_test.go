package vfs

import (
	"bytes"
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// impls are the FS implementations every behaviour test runs against, each
// with a fresh directory to work in: CrashFS must behave as os does.
var impls = []struct {
	name string
	new  func(t *testing.T) (FS, string)
}{
	{"os", func(t *testing.T) (FS, string) { return OS(), t.TempDir() }},
	{"crash", func(t *testing.T) (FS, string) {
		c := NewCrashFS()
		if err := c.MkdirAll("/data", 0o700); err != nil {
			t.Fatal(err)
		}
		return c, "/data"
	}},
}

func TestFS(t *testing.T) {
	tests := []struct {
		name string
		run  func(t *testing.T, fsys FS, dir string)
	}{
		{"write and read back", func(t *testing.T, fsys FS, dir string) {
			path := filepath.Join(dir, "f")
			f := create(t, fsys, path, os.O_RDWR|os.O_CREATE|os.O_EXCL)
			if _, err := f.Write([]byte("hello ")); err != nil {
				t.Fatal(err)
			}
			if _, err := f.Write([]byte("world")); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("W"), 6); err != nil {
				t.Fatal(err)
			}
			if err := f.Datasync(); err != nil {
				t.Fatal(err)
			}
			if err := f.Sync(); err != nil {
				t.Fatal(err)
			}
			b := make([]byte, 5)
			if n, err := f.ReadAt(b, 6); n != 5 || err != nil || string(b) != "World" {
				t.Fatalf("ReadAt = %d, %v, %q", n, err, b)
			}
			if n, err := f.ReadAt(b, 8); n != 3 || err != io.EOF {
				t.Fatalf("ReadAt past the end = %d, %v; want 3, EOF", n, err)
			}
			if st, err := f.Stat(); err != nil || st.Size() != 11 || st.IsDir() || st.Name() != "f" {
				t.Fatalf("Stat = %v, %v", st, err)
			}
			if f.Name() != path {
				t.Fatalf("Name = %q, want %q", f.Name(), path)
			}
			mustClose(t, f)
			wantFile(t, fsys, path, "hello World")
			r, err := fsys.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			all, err := io.ReadAll(io.LimitReader(r, 100))
			if err != nil || string(all) != "hello World" {
				t.Fatalf("ReadAll = %q, %v", all, err)
			}
			if n, err := r.Read(b); n != 0 || err != io.EOF {
				t.Fatalf("Read at the end = %d, %v; want 0, EOF", n, err)
			}
		}},
		{"missing file", func(t *testing.T, fsys FS, dir string) {
			path := filepath.Join(dir, "missing")
			_, err := fsys.Open(path)
			wantErr(t, err, fs.ErrNotExist)
			_, err = fsys.ReadFile(path)
			wantErr(t, err, fs.ErrNotExist)
			_, err = fsys.Stat(path)
			wantErr(t, err, fs.ErrNotExist)
			wantErr(t, fsys.Remove(path), fs.ErrNotExist)
			wantErr(t, fsys.Rename(path, path+"2"), fs.ErrNotExist)
			_, err = fsys.OpenFile(filepath.Join(dir, "nodir", "f"), os.O_RDWR|os.O_CREATE, 0o600)
			wantErr(t, err, fs.ErrNotExist)
			wantErr(t, fsys.SyncDir(filepath.Join(dir, "nodir")), fs.ErrNotExist)
		}},
		{"exclusive create", func(t *testing.T, fsys FS, dir string) {
			path := filepath.Join(dir, "f")
			mustClose(t, create(t, fsys, path, os.O_RDWR|os.O_CREATE|os.O_EXCL))
			_, err := fsys.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
			wantErr(t, err, fs.ErrExist)
		}},
		{"truncate on open", func(t *testing.T, fsys FS, dir string) {
			path := filepath.Join(dir, "f")
			writeFile(t, fsys, path, "old content")
			f := create(t, fsys, path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
			if _, err := f.Write([]byte("new")); err != nil {
				t.Fatal(err)
			}
			mustClose(t, f)
			wantFile(t, fsys, path, "new")
		}},
		{"append", func(t *testing.T, fsys FS, dir string) {
			path := filepath.Join(dir, "f")
			writeFile(t, fsys, path, "one")
			f := create(t, fsys, path, os.O_WRONLY|os.O_APPEND)
			if _, err := f.Write([]byte(" two")); err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("x"), 0); err == nil {
				t.Fatal("WriteAt on an O_APPEND file succeeded")
			}
			mustClose(t, f)
			wantFile(t, fsys, path, "one two")
		}},
		{"truncate", func(t *testing.T, fsys FS, dir string) {
			path := filepath.Join(dir, "f")
			writeFile(t, fsys, path, "abcdef")
			f := create(t, fsys, path, os.O_RDWR)
			if err := f.Truncate(2); err != nil {
				t.Fatal(err)
			}
			if err := f.Truncate(4); err != nil {
				t.Fatal(err)
			}
			mustClose(t, f)
			wantFile(t, fsys, path, "ab\x00\x00")
		}},
		{"access mode", func(t *testing.T, fsys FS, dir string) {
			path := filepath.Join(dir, "f")
			writeFile(t, fsys, path, "abc")
			r, err := fsys.Open(path)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := r.Write([]byte("x")); err == nil {
				t.Fatal("Write on a read-only file succeeded")
			}
			if err := r.Truncate(0); err == nil {
				t.Fatal("Truncate on a read-only file succeeded")
			}
			mustClose(t, r)
			w := create(t, fsys, path, os.O_WRONLY)
			if _, err := w.ReadAt(make([]byte, 1), 0); err == nil {
				t.Fatal("ReadAt on a write-only file succeeded")
			}
			mustClose(t, w)
			wantFile(t, fsys, path, "abc")
		}},
		{"closed file", func(t *testing.T, fsys FS, dir string) {
			f := create(t, fsys, filepath.Join(dir, "f"), os.O_RDWR|os.O_CREATE)
			mustClose(t, f)
			_, err := f.ReadAt(make([]byte, 1), 0)
			wantErr(t, err, fs.ErrClosed)
			_, err = f.Write([]byte("x"))
			wantErr(t, err, fs.ErrClosed)
			wantErr(t, f.Sync(), fs.ErrClosed)
			wantErr(t, f.Datasync(), fs.ErrClosed)
			wantErr(t, f.Truncate(0), fs.ErrClosed)
			_, err = f.Stat()
			wantErr(t, err, fs.ErrClosed)
			wantErr(t, f.Close(), fs.ErrClosed)
		}},
		{"directories", func(t *testing.T, fsys FS, dir string) {
			sub := filepath.Join(dir, "a", "b")
			for range 2 { // again: already there
				if err := fsys.MkdirAll(sub, 0o700); err != nil {
					t.Fatal(err)
				}
			}
			writeFile(t, fsys, filepath.Join(dir, "a", "z"), "z")
			writeFile(t, fsys, filepath.Join(dir, "a", "c"), "c")
			entries, err := fsys.ReadDir(filepath.Join(dir, "a"))
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, e := range entries {
				s := e.Name()
				if e.IsDir() {
					s += "/"
				}
				got = append(got, s)
			}
			if want := []string{"b/", "c", "z"}; !slices.Equal(got, want) {
				t.Fatalf("ReadDir = %v, want %v", got, want)
			}
			if st, err := fsys.Stat(sub); err != nil || !st.IsDir() {
				t.Fatalf("Stat(%s) = %v, %v", sub, st, err)
			}
			if err := fsys.MkdirAll(filepath.Join(dir, "a", "z", "y"), 0o700); err == nil {
				t.Fatal("MkdirAll under a file succeeded")
			}
			if err := fsys.Remove(filepath.Join(dir, "a")); err == nil {
				t.Fatal("Remove of a non-empty directory succeeded")
			}
			if err := fsys.Remove(sub); err != nil {
				t.Fatal(err)
			}
			if err := fsys.SyncDir(filepath.Join(dir, "a")); err != nil {
				t.Fatal(err)
			}
		}},
		{"rename replaces", func(t *testing.T, fsys FS, dir string) {
			from, to := filepath.Join(dir, "from"), filepath.Join(dir, "to")
			writeFile(t, fsys, from, "new")
			writeFile(t, fsys, to, "old")
			r, err := fsys.Open(to)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if err := fsys.Rename(from, to); err != nil {
				t.Fatal(err)
			}
			wantFile(t, fsys, to, "new")
			_, err = fsys.Stat(from)
			wantErr(t, err, fs.ErrNotExist)
			// The replaced file stays readable through its handle.
			b := make([]byte, 3)
			if _, err := r.ReadAt(b, 0); err != nil || string(b) != "old" {
				t.Fatalf("ReadAt of the replaced file = %q, %v", b, err)
			}
			if err := fsys.Rename(to, to); err != nil {
				t.Fatalf("rename onto itself: %v", err)
			}
			wantFile(t, fsys, to, "new")
		}},
		{"remove", func(t *testing.T, fsys FS, dir string) {
			path := filepath.Join(dir, "f")
			writeFile(t, fsys, path, "x")
			if err := fsys.Remove(path); err != nil {
				t.Fatal(err)
			}
			_, err := fsys.Stat(path)
			wantErr(t, err, fs.ErrNotExist)
		}},
		{"write file atomically", func(t *testing.T, fsys FS, dir string) {
			path := filepath.Join(dir, "meta.json")
			for _, content := range []string{"first", "second, longer"} {
				if err := WriteFileAtomic(fsys, path, []byte(content)); err != nil {
					t.Fatal(err)
				}
				wantFile(t, fsys, path, content)
			}
			_, err := fsys.Stat(path + ".tmp")
			wantErr(t, err, fs.ErrNotExist)
			err = WriteFileAtomic(fsys, filepath.Join(dir, "nodir", "x"), nil)
			wantErr(t, err, fs.ErrNotExist)
		}},
	}
	for _, impl := range impls {
		for _, tt := range tests {
			t.Run(impl.name+"/"+tt.name, func(t *testing.T) {
				fsys, dir := impl.new(t)
				tt.run(t, fsys, dir)
			})
		}
	}
}

func create(t *testing.T, fsys FS, path string, flag int) File {
	t.Helper()
	f, err := fsys.OpenFile(path, flag, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func mustClose(t *testing.T, f File) {
	t.Helper()
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// writeFile writes path and fsyncs it, but not its directory.
func writeFile(t *testing.T, fsys FS, path, content string) {
	t.Helper()
	f := create(t, fsys, path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if _, err := f.Write([]byte(content)); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	mustClose(t, f)
}

func wantFile(t *testing.T, fsys FS, path, want string) {
	t.Helper()
	b, err := fsys.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, []byte(want)) {
		t.Fatalf("%s holds %q, want %q", path, b, want)
	}
}

func wantErr(t *testing.T, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("error %v, want one matching %v", err, target)
	}
}
