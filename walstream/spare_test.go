package walstream

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/walrelay/walrelay/internal/waltest"
)

// Segments are created full size (zero-filled), the next one's file is
// prepared while the current one fills, and a clean Close cuts the fill off.
// Reopening keeps WAL up to the last whole record, as after a crash.
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
	if _, got := s2.DurableEnd(); got != recordEnd(end) {
		t.Fatalf("reopened at %s, want the end of the last whole record %s", got, recordEnd(end))
	}
	if _, err := os.Stat(filepath.Join(dir, "wal", spareName)); !os.IsNotExist(err) {
		t.Fatalf("leftover spare not removed at recovery: %v", err)
	}
	if st, _ := os.Stat(partial); st.Size() != testSeg {
		t.Fatalf("reopened writer's segment has %d bytes, want it zero-filled to %d", st.Size(), testSeg)
	}
	writeWAL(t, s2, recordEnd(end), 3*testSeg, 70_000)
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

// WAL written to a zero-filled segment reaches its file in one piece at the
// next sync, not a write call per message; a crash before that sync leaves
// the store where the last sync left it.
func TestWritesReachTheFileAtSync(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	wal := waltest.Generate(testSysID, testSeg, 1, 0, testSeg)
	writeWAL(t, s, 0, 3*PageSize+100, 1000) // synced
	synced := LSN(3*PageSize + 100)
	for at := synced; at < 6*PageSize; at += 500 {
		if err := s.Write(1, at, wal[at:at+500]); err != nil {
			t.Fatal(err)
		}
	}
	onDisk, err := os.ReadFile(filepath.Join(dir, "wal", "000000010000000000000000.partial"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(onDisk[:synced], wal[:synced]) || !allZero(onDisk[synced:]) {
		t.Fatal("the file holds other than the synced WAL followed by zeros before the next sync")
	}
	// A crash now: reopened (a copy, as the crashed store would be left),
	// the store ends on the last whole record the last sync wrote; the
	// rest is fetched again.
	crashed := t.TempDir()
	if err := os.CopyFS(crashed, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	s2 := openTestStore(t, crashed)
	if _, end := s2.DurableEnd(); end != recordEnd(synced) {
		t.Fatalf("after a crash before the sync the store ends at %s, want %s", end, recordEnd(synced))
	}
	s2.Close()
	// Without the crash, the sync writes it all.
	if _, err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	onDisk, _ = os.ReadFile(filepath.Join(dir, "wal", "000000010000000000000000.partial"))
	if !bytes.Equal(onDisk[:6*PageSize], wal[:6*PageSize]) {
		t.Fatal("the sync did not write the buffered WAL")
	}
}
