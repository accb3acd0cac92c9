package walstream

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/walrelay/walrelay/internal/waltest"
)

// Segments are created full size (zero-filled), the next one's file is
// prepared while the current one fills, and a clean Close cuts the fill off
// so that reopening finds the exact end even when the WAL's last bytes are
// zeros (which after a crash cannot be told from the fill).
func TestZeroFilledSegmentsAndExactEndAfterClose(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	wal := waltest.Generate(testSysID, testSeg, 1, 0, 3*testSeg)
	// An end in the second segment just after a zero byte's run.
	end := LSN(testSeg + 5*PageSize + 100)
	for wal[end-1] != 0 || wal[end] == 0 {
		end++
	}
	writeWAL(t, s, 0, end, 30_000)
	partial := filepath.Join(dir, "wal", "000000010000000000000001.partial")
	if st, err := os.Stat(partial); err != nil || st.Size() != testSeg {
		t.Fatalf("writer's segment: %v, size %d; want zero-filled to %d", err, sizeOf(st), testSeg)
	}
	s.spareWG.Wait()
	if st, err := os.Stat(filepath.Join(dir, "wal", spareName)); err != nil || st.Size() != testSeg {
		t.Fatalf("spare segment file: %v, size %d; want %d", err, sizeOf(st), testSeg)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(partial); st.Size() != int64(end)-testSeg {
		t.Fatalf("after Close the segment has %d bytes, want its %d bytes of WAL", st.Size(), int64(end)-testSeg)
	}
	s2 := openTestStore(t, dir)
	if _, got := s2.DurableEnd(); got != end {
		t.Fatalf("reopened at %s, want the exact end %s", got, end)
	}
	if _, err := os.Stat(filepath.Join(dir, "wal", spareName)); !os.IsNotExist(err) {
		t.Fatalf("leftover spare not removed at recovery: %v", err)
	}
	if st, _ := os.Stat(partial); st.Size() != testSeg {
		t.Fatalf("reopened writer's segment has %d bytes, want it zero-filled to %d", st.Size(), testSeg)
	}
	writeWAL(t, s2, end, 3*testSeg, 70_000)
	if got := readAll(t, s2, 0, 3*testSeg); !bytes.Equal(got, wal) {
		t.Fatal("WAL read back differs")
	}
}

func sizeOf(st os.FileInfo) int64 {
	if st == nil {
		return -1
	}
	return st.Size()
}
