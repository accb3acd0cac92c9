package walstream

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"go.uber.org/goleak"

	"github.com/walrelay/walrelay/internal/waltest"
)

const (
	testSeg   = 1 << 20
	testSysID = 7300000000000000001
)

var testID = Identity{SystemID: testSysID, SegmentSize: testSeg}

func openTestStore(t *testing.T, dir string) *Store {
	t.Helper()
	s, err := OpenStore(dir, StoreOptions{TailBytes: 2 * testSeg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// writeWAL writes synthetic WAL [from, to) in chunks of step bytes and syncs.
func writeWAL(t *testing.T, s *Store, from, to LSN, step int) {
	t.Helper()
	for pos := from; pos < to; {
		n := min(step, int(to-pos))
		if err := s.Write(1, pos, waltest.Generate(testSysID, testSeg, 1, uint64(pos), n)); err != nil {
			t.Fatal(err)
		}
		pos += LSN(n)
	}
	if _, err := s.Sync(); err != nil {
		t.Fatal(err)
	}
}

func readAll(t *testing.T, s *Store, from, to LSN) []byte {
	t.Helper()
	out := make([]byte, 0, to-from)
	buf := make([]byte, 100_000)
	for pos := from; pos < to; {
		n, err := s.ReadAt(1, pos, buf[:min(len(buf), int(to-pos))])
		if err != nil {
			t.Fatalf("ReadAt %s: %v", pos, err)
		}
		if n == 0 {
			t.Fatalf("ReadAt %s: nothing, durable end %v", pos, s.durable.Load())
		}
		out = append(out, buf[:n]...)
		pos += LSN(n)
	}
	return out
}

func TestStoreWriteReadAcrossSegments(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	if err := s.Bind(testID, "15.18"); err != nil {
		t.Fatal(err)
	}
	start := LSN(3 * testSeg)
	if err := s.StartAt(1, start+1); err == nil {
		t.Fatal("StartAt accepted a position inside a segment")
	}
	if err := s.StartAt(1, start); err != nil {
		t.Fatal(err)
	}
	end := start + 2*testSeg + 12345
	writeWAL(t, s, start, end, 70_001)
	if tli, got := s.DurableEnd(); tli != 1 || got != end {
		t.Fatalf("DurableEnd = %d %s, want 1 %s", tli, got, end)
	}
	want := waltest.Generate(testSysID, testSeg, 1, uint64(start), int(end-start))
	if got := readAll(t, s, start, end); !bytes.Equal(got, want) {
		t.Fatal("read WAL differs from written WAL")
	}
	// Complete segments carry their final name, the current one .partial.
	for _, name := range []string{"000000010000000000000003", "000000010000000000000004", "000000010000000000000005.partial"} {
		if _, err := os.Stat(filepath.Join(dir, "wal", name)); err != nil {
			t.Errorf("expected file %s: %v", name, err)
		}
	}
	onDisk, _ := os.ReadFile(filepath.Join(dir, "wal", "000000010000000000000004"))
	if !bytes.Equal(onDisk, want[testSeg:2*testSeg]) {
		t.Error("segment file 4 differs from the WAL written")
	}
	// Nothing beyond the durable end is readable, and a read never crosses
	// a segment boundary.
	if n, err := s.ReadAt(1, end, make([]byte, 10)); n != 0 || err != nil {
		t.Errorf("ReadAt(end) = %d, %v", n, err)
	}
	if n, _ := s.ReadAt(1, start+testSeg-10, make([]byte, 100)); n != 10 {
		t.Errorf("ReadAt across boundary returned %d bytes, want 10", n)
	}
	// Older than held: the exact segment name PostgreSQL would give.
	_, err := s.ReadAt(1, 0x100, make([]byte, 10))
	var removed *WALRemovedError
	if !errors.As(err, &removed) || removed.Segment != "000000010000000000000000" || !errors.Is(err, ErrWALRemoved) {
		t.Errorf("ReadAt before oldest: %v", err)
	}
}

func TestStoreWriteChecksResentAndGaps(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	writeWAL(t, s, 0, 50_000, 50_000)
	// Resending held WAL with the same bytes is accepted.
	if err := s.Write(1, 40_000, waltest.Generate(testSysID, testSeg, 1, 40_000, 20_000)); err != nil {
		t.Fatalf("resend: %v", err)
	}
	if _, end := s.WriteEnd(); end != 60_000 {
		t.Fatalf("write end %s after overlapping write", end)
	}
	bad := waltest.Generate(testSysID, testSeg, 1, 50_000, 20_000)
	bad[0] ^= 0xff
	if err := s.Write(1, 50_000, bad); err == nil {
		t.Error("resent WAL that differs was accepted")
	}
	if err := s.Write(1, 70_000, make([]byte, 10)); err == nil {
		t.Error("gap accepted")
	}
	if err := s.Write(2, 60_000, make([]byte, 10)); err == nil {
		t.Error("write on another timeline accepted")
	}
}

func TestStoreIdentity(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	if _, ok := s.Identity(); ok {
		t.Fatal("new store has an identity")
	}
	if err := s.Bind(testID, "15.18"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	s = openTestStore(t, dir)
	if id, ok := s.Identity(); !ok || id != testID || s.ServerVersion() != "15.18" {
		t.Fatalf("identity after reopen: %+v %v %q", id, ok, s.ServerVersion())
	}
	err := s.Bind(Identity{SystemID: 42, SegmentSize: testSeg}, "15.18")
	var mm *IdentityMismatchError
	if !errors.As(err, &mm) {
		t.Fatalf("Bind with another system id: %v", err)
	}
	for _, want := range []string{"42", "7300000000000000001"} {
		if !bytes.Contains([]byte(err.Error()), []byte(want)) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if err := s.Bind(Identity{SystemID: testSysID, SegmentSize: 2 * testSeg}, "15.18"); !errors.As(err, &mm) {
		t.Errorf("Bind with another segment size: %v", err)
	}
	// After pg_upgrade: another system id and another major, both named.
	err = s.Bind(Identity{SystemID: 43, SegmentSize: testSeg}, "17.10")
	for _, want := range []string{"43", "7300000000000000001", "PostgreSQL 17.10", "PostgreSQL 15.18"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v does not name %s", err, want)
		}
	}
	// Another major on the same system id is refused too; a minor update
	// is not.
	if err := s.Bind(testID, "16.2"); !errors.As(err, &mm) {
		t.Errorf("Bind with another major: %v", err)
	}
	if err := s.Bind(testID, "15.19 (Debian 15.19-1)"); err != nil {
		t.Errorf("Bind after a minor update: %v", err)
	}
	if s.ServerVersion() != "15.19 (Debian 15.19-1)" {
		t.Errorf("server version after a minor update: %q", s.ServerVersion())
	}
}

func TestMajorVersion(t *testing.T) {
	for v, want := range map[string]int{"15.18 (Debian 15.18-0+deb12u1)": 15, "18.4": 18, "14.23": 14, "": 0, "devel": 0} {
		if got := MajorVersion(v); got != want {
			t.Errorf("MajorVersion(%q) = %d, want %d", v, got, want)
		}
	}
}

func TestStoreRecoversAfterCrash(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	s.Bind(testID, "15")
	s.StartAt(1, testSeg)
	end := LSN(testSeg + testSeg + 3*PageSize + 100)
	writeWAL(t, s, testSeg, end, 64<<10)
	// Simulate a crash: no Close, files left as they are; then a torn tail
	// of garbage pages after the valid data.
	partial := filepath.Join(dir, "wal", "000000010000000000000002.partial")
	f, err := os.OpenFile(partial, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bytes.Repeat([]byte{0}, 2*PageSize), int64(end.SegmentOffset(testSeg))+PageSize-100); err != nil {
		t.Fatal(err)
	}
	f.Close()
	os.WriteFile(filepath.Join(dir, "wal", "leftover.tmp"), []byte("x"), 0o600)

	s2 := openTestStore(t, dir)
	tli, got := s2.DurableEnd()
	// The WAL ends on the last whole record written.
	want := waltest.Generate(testSysID, testSeg, 1, testSeg, int(end-testSeg))
	wantEnd := recordEnd(end)
	if tli != 1 || got != wantEnd {
		t.Fatalf("recovered durable end %d %s, want 1 %s", tli, got, wantEnd)
	}
	if _, err := os.Stat(filepath.Join(dir, "wal", "leftover.tmp")); !os.IsNotExist(err) {
		t.Error("leftover temp file not removed")
	}
	// The valid prefix reads back; writing resumes where the data ends
	// once the upstream resends from the durable end.
	if got := readAll(t, s2, testSeg, wantEnd); !bytes.Equal(got, want[:wantEnd-testSeg]) {
		t.Fatal("recovered WAL differs")
	}
	writeWAL(t, s2, wantEnd, 3*testSeg+10, 50_000)
	want = waltest.Generate(testSysID, testSeg, 1, testSeg, 2*testSeg+10)
	if got := readAll(t, s2, testSeg, 3*testSeg+10); !bytes.Equal(got, want) {
		t.Fatal("WAL differs after resuming")
	}
}

func TestStoreTruncatesTornPage(t *testing.T) {
	dir := t.TempDir()
	s := openTestStore(t, dir)
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	end := LSN(5*PageSize + 10)
	writeWAL(t, s, 0, end, 4096)
	// Overwrite the header of page 3 as a torn write would leave it.
	partial := filepath.Join(dir, "wal", "000000010000000000000000.partial")
	f, _ := os.OpenFile(partial, os.O_WRONLY, 0)
	f.WriteAt(make([]byte, 24), 3*PageSize)
	f.Close()
	s2 := openTestStore(t, dir)
	// Cut at the last record that is whole before the torn page.
	wantEnd := recordEnd(3 * PageSize)
	if _, got := s2.DurableEnd(); got != wantEnd {
		t.Fatalf("durable end after torn page = %s, want %s", got, wantEnd)
	}
	// The upstream resends from there and the store continues.
	writeWAL(t, s2, wantEnd, testSeg+10, 50_000)
	want := waltest.Generate(testSysID, testSeg, 1, 0, testSeg+10)
	if got := readAll(t, s2, 0, testSeg+10); !bytes.Equal(got, want) {
		t.Fatal("WAL differs after resuming")
	}
}

func TestStoreRemoveBefore(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	writeWAL(t, s, 0, 4*testSeg+5, 200_000)
	n, err := s.RemoveBefore(2*testSeg + 7)
	if err != nil || n != 2 {
		t.Fatalf("RemoveBefore = %d, %v; want 2 segments", n, err)
	}
	if oldest, ok := s.OldestLSN(1); !ok || oldest != 2*testSeg {
		t.Fatalf("OldestLSN = %s %v", oldest, ok)
	}
	if _, err := s.ReadAt(1, testSeg, make([]byte, 1)); !errors.Is(err, ErrWALRemoved) {
		t.Errorf("read of removed segment: %v", err)
	}
	// The writer's segment survives any request.
	s.RemoveBefore(100 * testSeg)
	if got := s.SegmentInfos(); len(got) != 1 || got[0].Start != 4*testSeg || got[0].Complete {
		t.Errorf("segments after removing all: %+v", got)
	}
}

// Readers follow the writer concurrently and see exactly the written bytes.
func TestStoreConcurrentReaders(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	const end = 3*testSeg + 777
	want := waltest.Generate(testSysID, testSeg, 1, 0, end)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			got := make([]byte, 0, end)
			buf := make([]byte, 30_000)
			for pos := LSN(0); pos < end; {
				wait := s.Wait()
				n, err := s.ReadAt(1, pos, buf)
				if err != nil {
					errs <- err
					return
				}
				if n == 0 {
					<-wait
					continue
				}
				got = append(got, buf[:n]...)
				pos += LSN(n)
			}
			if !bytes.Equal(got, want) {
				errs <- errors.New("reader saw different bytes")
			}
		}()
	}
	for pos := 0; pos < end; {
		n := min(9000, end-pos)
		if err := s.Write(1, LSN(pos), want[pos:pos+n]); err != nil {
			t.Fatal(err)
		}
		pos += n
		if _, err := s.Sync(); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// A segment that ends in zeros after its valid pages (the padding after an
// XLOG_SWITCH record: pg_switch_wal, the end of a base backup) installs; one
// with anything else after its valid pages does not.
func TestInstallSegmentAfterSwitch(t *testing.T) {
	s := openTestStore(t, t.TempDir())
	if err := s.Bind(testID, "15.18"); err != nil {
		t.Fatal(err)
	}
	if err := s.StartAt(1, 3*testSeg); err != nil {
		t.Fatal(err)
	}
	writeWAL(t, s, 3*testSeg, 3*testSeg+PageSize, PageSize)
	switched := make([]byte, testSeg)
	copy(switched, waltest.Generate(testSysID, testSeg, 1, 2*testSeg, 3*PageSize))
	if err := s.InstallSegment(1, 2, switched); err != nil {
		t.Fatalf("segment padded with zeros after a switch: %v", err)
	}
	got := readAll(t, s, 2*testSeg, 3*testSeg)
	if !bytes.Equal(got, switched) {
		t.Fatal("installed segment reads back different")
	}
	garbage := make([]byte, testSeg)
	copy(garbage, waltest.Generate(testSysID, testSeg, 1, testSeg, 3*PageSize))
	garbage[5*PageSize+7] = 1
	if err := s.InstallSegment(1, 1, garbage); err == nil || !strings.Contains(err.Error(), "page at offset 24576") {
		t.Errorf("valid pages, zeros and a stray byte: %v, want an error at offset 24576", err)
	}
	if err := s.InstallSegment(1, 0, make([]byte, testSeg)); err == nil {
		t.Error("an all-zero segment installed")
	}
}

// recordEnd is the end of the last whole record of waltest's WAL at or
// before l: where recovery ends a store written up to l.
func recordEnd(l LSN) LSN {
	return LSN(waltest.RecordEndAtOrBefore(testSysID, testSeg, 1, uint64(l)))
}
