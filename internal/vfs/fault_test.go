package vfs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
)

// TestWriteFileAtomicCrash crashes at every step of WriteFileAtomic: the
// file must hold the old or the new content whole, and once it returns,
// the new.
func TestWriteFileAtomicCrash(t *testing.T) {
	const old, new = "old content", "new content, longer than the old"
	tests := []struct {
		name string
		prep func(t *testing.T, c *CrashFS)
	}{
		{"replacing a file", func(t *testing.T, c *CrashFS) {
			must(t, WriteFileAtomic(c, "/d/meta", []byte(old)))
		}},
		{"replacing a file, leftover temp file", func(t *testing.T, c *CrashFS) {
			must(t, WriteFileAtomic(c, "/d/meta", []byte(old)))
			writeFile(t, c, "/d/meta.tmp", "leftover garbage")
			must(t, c.SyncDir("/d"))
		}},
		{"new file", func(t *testing.T, c *CrashFS) {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newDurable(t)
			tt.prep(t, c)
			had, _ := c.ReadFile("/d/meta")
			var crashes []*CrashFS
			var steps []string
			c.SetFault(func(op Op, path string) error {
				steps = append(steps, op.String()+" "+path)
				crashes = append(crashes, c.CrashClean())
				for seed := range 50 {
					crashes = append(crashes, c.Crash(rng(seed)))
				}
				return nil
			})
			must(t, WriteFileAtomic(c, "/d/meta", []byte(new)))
			c.SetFault(nil)
			if len(steps) < 6 {
				t.Fatalf("saw only %q", steps)
			}
			seen := make(map[string]bool)
			for i, crashed := range crashes {
				got, err := crashed.ReadFile("/d/meta")
				switch {
				case errors.Is(err, fs.ErrNotExist) && had == nil:
					seen["none"] = true
				case err != nil:
					t.Fatalf("crash %d: %v", i, err)
				case bytes.Equal(got, had):
					seen["old"] = true
				case string(got) == new:
					seen["new"] = true
				default:
					t.Fatalf("crash %d: meta holds %q, want %q or %q", i, got, had, new)
				}
				// Only the temp name may hold anything else.
				entries, err := crashed.ReadDir("/d")
				must(t, err)
				for _, e := range entries {
					if n := e.Name(); n != "meta" && n != "meta.tmp" {
						t.Fatalf("crash %d: unexpected file %s", i, n)
					}
				}
			}
			if !seen["new"] || !seen["old"] && !seen["none"] {
				t.Errorf("crashes gave only %v", seen)
			}
			for seed := range 50 {
				wantFile(t, c.Crash(rng(seed)), "/d/meta", new)
			}
		})
	}
}

// TestFault fails chosen calls, the way a test fails the Nth write or the
// rename of a snapshot.
func TestFault(t *testing.T) {
	tests := []struct {
		name  string
		fail  Op
		nth   int
		check func(t *testing.T, c *CrashFS, err error)
	}{
		{"second write: disk full", OpWrite, 2, func(t *testing.T, c *CrashFS, err error) {
			var pe *fs.PathError
			if !errors.As(err, &pe) || pe.Path != "/d/f" || pe.Op != "write" {
				t.Fatalf("error %v, want a *fs.PathError on write /d/f", err)
			}
			wantFile(t, c, "/d/f", "one")
		}},
		{"rename", OpRename, 1, func(t *testing.T, c *CrashFS, err error) {
			var le *os.LinkError
			if !errors.As(err, &le) || le.Old != "/d/f" || le.New != "/d/g" {
				t.Fatalf("error %v, want a *os.LinkError on /d/f", err)
			}
			wantFile(t, c, "/d/f", "onetwo")
			_, err = c.Stat("/d/g")
			wantErr(t, err, fs.ErrNotExist)
		}},
		{"sync", OpSync, 1, func(t *testing.T, c *CrashFS, err error) {
			// The failed fsync made nothing durable.
			if got := listing(t, c.CrashClean(), "/d"); got != "f:" {
				t.Fatalf("clean crash left %q, want f:", got)
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := newDurable(t)
			var calls atomic.Int32
			c.SetFault(func(op Op, path string) error {
				if op == tt.fail && int(calls.Add(1)) == tt.nth {
					return syscall.ENOSPC
				}
				return nil
			})
			err := func() error {
				f, err := c.OpenFile("/d/f", os.O_RDWR|os.O_CREATE, 0o600)
				if err != nil {
					return err
				}
				defer f.Close()
				if err := c.SyncDir("/d"); err != nil {
					return err
				}
				for _, s := range []string{"one", "two"} {
					if _, err := f.Write([]byte(s)); err != nil {
						return err
					}
				}
				if err := f.Sync(); err != nil {
					return err
				}
				return c.Rename("/d/f", "/d/g")
			}()
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatalf("error %v, want ENOSPC", err)
			}
			tt.check(t, c, err)
		})
	}
}

// TestCrashFSConcurrent runs a writer that fsyncs, readers, a goroutine
// changing names and crashes at once (run with -race). Every crash must
// keep what the writer had synced before it began.
func TestCrashFSConcurrent(t *testing.T) {
	c := newDurable(t)
	w := create(t, c, "/d/wal", os.O_RDWR|os.O_CREATE)
	must(t, c.SyncDir("/d"))
	const chunk, chunks = 100, 200
	var durable atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	done := make(chan struct{})
	wg.Go(func() {
		defer close(done)
		for i := range chunks {
			b := bytes.Repeat([]byte{byte(i)}, chunk)
			if _, err := w.WriteAt(b, int64(i*chunk)); err != nil {
				errs <- err
				return
			}
			if i%3 == 0 {
				if err := w.Datasync(); err != nil {
					errs <- err
					return
				}
				durable.Store(int64((i + 1) * chunk))
			}
		}
	})
	for range 3 {
		wg.Go(func() {
			r, err := c.Open("/d/wal")
			if err != nil {
				errs <- err
				return
			}
			defer r.Close()
			p := make([]byte, chunk)
			for {
				select {
				case <-done:
					return
				default:
				}
				if n := durable.Load(); n > 0 {
					if _, err := r.ReadAt(p, n-chunk); err != nil || p[0] != byte(n/chunk-1) {
						errs <- fmt.Errorf("read at %d: %v, %d", n-chunk, err, p[0])
						return
					}
				}
			}
		})
	}
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-done:
				return
			default:
			}
			name := fmt.Sprintf("/d/slot%d", i%4)
			if err := WriteFileAtomic(c, name, []byte(name)); err != nil {
				errs <- err
				return
			}
			if i%5 == 0 {
				c.Remove(name)
			}
		}
	})
	wg.Go(func() {
		for seed := 0; ; seed++ {
			select {
			case <-done:
				return
			default:
			}
			n := durable.Load()
			b, err := c.Crash(rng(seed)).ReadFile("/d/wal")
			if err != nil || int64(len(b)) < n {
				errs <- fmt.Errorf("crash %d: %d bytes, %v; %d were synced", seed, len(b), err, n)
				return
			}
			for i := range n / chunk {
				if b[i*chunk] != byte(i) || b[(i+1)*chunk-1] != byte(i) {
					errs <- fmt.Errorf("crash %d: synced chunk %d lost", seed, i)
					return
				}
			}
		}
	})
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	mustClose(t, w)
	b, err := c.CrashClean().ReadFile("/d/wal")
	must(t, err)
	if int64(len(b)) != durable.Load() {
		t.Errorf("clean crash kept %d bytes of the WAL file, want the %d synced", len(b), durable.Load())
	}
}
