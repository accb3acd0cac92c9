package walstream

import (
	"bytes"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/walrelay/walrelay/internal/vfs"
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
	// The spare is ready under the next segment's name, its name durable.
	spare := filepath.Join(dir, "wal", "000000010000000000000002.partial")
	if st, err := os.Stat(spare); err != nil || st.Size() != testSeg {
		t.Fatalf("spare segment file: %v, size %d; want %d", err, sizeOf(st), testSeg)
	}
	if _, err := os.Stat(filepath.Join(dir, "wal", spareName)); !os.IsNotExist(err) {
		t.Fatalf("spare still under its temporary name: %v", err)
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
	if _, err := os.Stat(spare); !os.IsNotExist(err) {
		t.Fatalf("unused spare not removed at recovery: %v", err)
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

// With the spare ready, crossing into the next segment renames the full one
// and opens the spare, with no directory fsync on the writer's path (a
// journal commit on a busy disk); the spare's own preparation, which does
// fsync the directory, waits here until the crossing is done to prove it.
// Power loss at any point of this is TestStoreSurvivesPowerLoss's.
func TestSegmentSwitchWithoutDirectoryFsync(t *testing.T) {
	cfs := vfs.NewCrashFS()
	s, err := OpenStore("/store", StoreOptions{FS: cfs, TailBytes: 2 * testSeg})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	writeWAL(t, s, 0, testSeg-100, 50_000)
	s.spareWG.Wait()

	var (
		mu      sync.Mutex
		ops     []string
		release = make(chan struct{})
	)
	cfs.SetFault(func(op vfs.Op, p string) error {
		if op == vfs.OpOpen && path.Base(p) == spareName {
			<-release // the next spare's preparation waits for the crossing
			return nil
		}
		mu.Lock()
		ops = append(ops, op.String()+" "+path.Base(p))
		mu.Unlock()
		return nil
	})
	writeWAL(t, s, testSeg-100, testSeg+3*PageSize, 1000)
	mu.Lock()
	crossing := slices.Clone(ops)
	mu.Unlock()
	close(release)
	for _, op := range crossing {
		if strings.HasPrefix(op, "syncdir") {
			t.Errorf("directory fsync on the writer's path: %q", crossing)
			break
		}
	}
	if !slices.Contains(crossing, "rename 000000010000000000000000.partial") {
		t.Errorf("the full segment was not renamed: %q", crossing)
	}
	s.spareWG.Wait()
	cfs.SetFault(nil)
	if got := readAll(t, s, 0, testSeg+3*PageSize); !bytes.Equal(got, waltest.Generate(testSysID, testSeg, 1, 0, testSeg+3*PageSize)) {
		t.Fatal("WAL read back differs")
	}
	names := dirNames(t, cfs, "/store/wal")
	want := []string{"000000010000000000000000", "000000010000000000000001.partial", "000000010000000000000002.partial"}
	if !slices.Equal(names, want) {
		t.Fatalf("wal directory holds %q, want %q", names, want)
	}
}

// A spare made for the old timeline's next segment is renamed for the new
// timeline's first one (and that name fsynced before WAL is written in it);
// one left behind by a crash is removed at recovery, not taken for WAL.
func TestSpareAcrossTimelineSwitch(t *testing.T) {
	dir := t.TempDir()
	s := storeWithSpare(t, dir)
	// A copy now is a crash with the writer in segment 1 and the spare
	// named 2 beside it.
	crashed := t.TempDir()
	if err := os.CopyFS(crashed, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	switchAt := LSN(testSeg + 2*PageSize)
	if err := s.SwitchTimeline(2, switchAt); err != nil {
		t.Fatal(err)
	}
	tl2 := waltest.Generate(testSysID, testSeg, 2, testSeg, 3*PageSize)
	if err := s.Write(2, testSeg, tl2); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Sync(); err != nil {
		t.Fatal(err)
	}
	s.spareWG.Wait()
	names := dirNames(t, s.fs, filepath.Join(dir, "wal"))
	want := []string{"000000010000000000000000", "000000010000000000000001.partial",
		"000000020000000000000001.partial", "000000020000000000000002.partial"}
	if !slices.Equal(names, want) {
		t.Fatalf("wal directory holds %q, want %q", names, want)
	}

	s2 := openTestStore(t, crashed)
	if tli, end := s2.DurableEnd(); tli != 1 || end != recordEnd(testSeg+5*PageSize) {
		t.Fatalf("recovered at %d/%s, want timeline 1 at %s", tli, end, recordEnd(testSeg+5*PageSize))
	}
	if names := dirNames(t, s2.fs, filepath.Join(crashed, "wal")); !slices.Equal(names, want[:2]) {
		t.Fatalf("after recovery the wal directory holds %q, want %q", names, want[:2])
	}
	rt := s2.TakeRecoveredTail()
	if rt == nil || rt.End != recordEnd(testSeg+5*PageSize) {
		t.Fatalf("recovered tail %+v, want it to end at %s", rt, recordEnd(testSeg+5*PageSize))
	}
}

// A segment begun whose every byte was lost (all zeros, as fsync lying
// would leave it) is dropped like a spare; the recovered tail still says
// where the store ends, so that WAL acknowledged beyond it is reported.
func TestLostNewestSegmentLeavesRecoveredTail(t *testing.T) {
	dir := t.TempDir()
	s := storeWithSpare(t, dir)
	s.Close()
	seg1 := filepath.Join(dir, "wal", "000000010000000000000001.partial")
	if err := os.WriteFile(seg1, make([]byte, testSeg), 0o600); err != nil {
		t.Fatal(err)
	}
	s2 := openTestStore(t, dir)
	if _, end := s2.DurableEnd(); end != testSeg {
		t.Fatalf("recovered at %s, want the end of segment 0, %s", end, LSN(testSeg))
	}
	if rt := s2.TakeRecoveredTail(); rt == nil || rt.End != testSeg || rt.Timeline != 1 {
		t.Fatalf("recovered tail %+v, want timeline 1 ending at %s", rt, LSN(testSeg))
	}
	writeWAL(t, s2, testSeg, 2*testSeg+PageSize, 40_000)
	if got := readAll(t, s2, 0, 2*testSeg+PageSize); !bytes.Equal(got, waltest.Generate(testSysID, testSeg, 1, 0, 2*testSeg+PageSize)) {
		t.Fatal("WAL read back differs")
	}
}

// storeWithSpare is a store in dir holding WAL into its second segment,
// with the third segment's spare ready.
func storeWithSpare(t *testing.T, dir string) *Store {
	t.Helper()
	s := openTestStore(t, dir)
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	writeWAL(t, s, 0, testSeg+5*PageSize, 40_000)
	s.spareWG.Wait()
	return s
}

func dirNames(t *testing.T, fsys vfs.FS, dir string) []string {
	t.Helper()
	entries, err := fsys.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names
}
