package walstream

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/walrelay/walrelay/internal/waltest"
)

// mountTmpfs mounts a tmpfs of size bytes at a fresh directory, or skips
// when the test may not mount (not root, no CAP_SYS_ADMIN).
func mountTmpfs(t *testing.T, size int) string {
	t.Helper()
	dir := t.TempDir()
	out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+strconv.Itoa(size), "tmpfs", dir).CombinedOutput()
	if err != nil {
		if os.Getenv("WALRELAY_REQUIRE_TMPFS") == "1" {
			t.Fatalf("WALRELAY_REQUIRE_TMPFS=1: cannot mount a tmpfs to fill: %v: %s", err, out)
		}
		t.Skipf("cannot mount a tmpfs to fill (needs root; WALRELAY_REQUIRE_TMPFS=1 makes this a failure): %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	return dir
}

// A store on a file system that fills up refuses the write that needs a new
// segment with a no-space error, publishes nothing it did not make durable,
// and takes the same WAL again once space is freed; reopened, it holds
// every byte in order.
func TestStoreDiskFullThenSpaceReturns(t *testing.T) {
	mnt := mountTmpfs(t, 4*testSeg)
	dir := filepath.Join(mnt, "store")
	s := openTestStore(t, dir)
	if err := s.Bind(testID, "15.18"); err != nil {
		t.Fatal(err)
	}
	start := LSN(2 * testSeg)
	if err := s.StartAt(1, start); err != nil {
		t.Fatal(err)
	}
	filler := filepath.Join(mnt, "filler")
	if err := os.WriteFile(filler, make([]byte, 2*testSeg), 0o600); err != nil {
		t.Fatal(err)
	}
	const step = 100_000
	gen := func(at LSN, n int) []byte { return waltest.Generate(testSysID, testSeg, 1, uint64(at), n) }
	pos := start
	var fullErr error
	for pos < start+10*testSeg {
		if fullErr = s.Write(1, pos, gen(pos, step)); fullErr != nil {
			break
		}
		pos += step
		if _, err := s.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	if fullErr == nil {
		t.Fatal("the store never ran out of space")
	}
	if !IsNoSpace(fullErr) {
		t.Fatalf("want a no-space error, got %v", fullErr)
	}
	t.Logf("full at %s: %v", pos, fullErr)
	_, durable := s.DurableEnd()
	_, written := s.WriteEnd()
	if durable != pos || written < pos || written > pos+step {
		t.Fatalf("durable %s, written %s, failed write at %s", durable, written, pos)
	}
	// Retrying while still full fails the same way and moves nothing.
	if err := s.Write(1, written, gen(written, step)); !IsNoSpace(err) {
		t.Fatalf("retry while full: %v", err)
	}
	if _, again := s.WriteEnd(); again != written {
		t.Fatalf("write end moved from %s to %s on a failed write", written, again)
	}
	if _, d := s.DurableEnd(); d != durable {
		t.Fatalf("durable end moved from %s to %s on a failed write", durable, d)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	end := written + 3*testSeg/2
	writeWAL(t, s, written, end, step)
	want := gen(start, int(end-start))
	if got := readAll(t, s, start, end); !bytes.Equal(got, want) {
		t.Fatal("WAL read back after space returned differs from what was written")
	}
	s.Close()
	s2 := openTestStore(t, dir)
	// Reopened, the WAL ends on the last whole record.
	end = recordEnd(end)
	if _, e := s2.DurableEnd(); e != end {
		t.Fatalf("reopened store ends at %s, want %s", e, end)
	}
	if got := readAll(t, s2, start, end); !bytes.Equal(got, want[:end-start]) {
		t.Fatal("WAL read back after reopening differs")
	}
	ents, _ := os.ReadDir(filepath.Join(dir, "wal"))
	for _, e := range ents {
		if filepath.Ext(e.Name()) == ".tmp" {
			t.Errorf("a failed write left %s behind", e.Name())
		}
	}
}

func TestIsNoSpaceNeverRetriesFailedFsync(t *testing.T) {
	err := &SyncError{&os.PathError{Op: "fsync", Path: "x", Err: errNoSpace()}}
	if IsNoSpace(err) {
		t.Fatal("a failed fsync was classed as retryable")
	}
	if !IsNoSpace(&os.PathError{Op: "fallocate", Path: "x", Err: errNoSpace()}) {
		t.Fatal("ENOSPC from fallocate not recognised")
	}
}

func errNoSpace() error { return syscall.ENOSPC }
