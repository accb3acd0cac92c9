package walstream

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/waltest"
)

func TestCompactedSegmentsReadBack(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, StoreOptions{TailBytes: 1, Compress: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	end := recordEnd(3*testSeg + 20_000)
	writeWAL(t, s, 0, end, 100_000)
	n, err := s.CompactOnce()
	if err != nil || n != 3 {
		t.Fatalf("CompactOnce = %d, %v", n, err)
	}
	for _, name := range []string{"000000010000000000000000.wz", "000000010000000000000002.wz"} {
		if _, err := os.Stat(filepath.Join(dir, "wal", name)); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "wal", "000000010000000000000001")); !os.IsNotExist(err) {
		t.Error("raw segment left behind after compression")
	}
	want := waltest.Generate(testSysID, testSeg, 1, 0, int(end))
	if got := readAll(t, s, 0, end); !bytes.Equal(got, want) {
		t.Fatal("compressed store reads back different WAL")
	}
	// A read in the middle of a segment.
	buf := make([]byte, 5000)
	got, _, err := s.Read(1, testSeg+ZFrameSize+77, buf)
	if err != nil || !bytes.Equal(got, want[testSeg+ZFrameSize+77:testSeg+ZFrameSize+77+len(got)]) || len(got) == 0 {
		t.Fatalf("mid-segment read: %d bytes, %v", len(got), err)
	}
	var held int64
	for _, info := range s.SegmentInfos() {
		held += info.Bytes
	}
	t.Logf("3 compressed segments + partial: %d bytes on disk for %d of WAL", held, end)
	s.Close()

	// Reopened, the compressed files are used as they are.
	s2 := openTestStore(t, dir)
	if got := readAll(t, s2, 0, end); !bytes.Equal(got, want) {
		t.Fatal("reopened compressed store reads back different WAL")
	}
}

func TestCorruptFrameDetectedAndReplaced(t *testing.T) {
	dir := t.TempDir()
	s, _ := OpenStore(dir, StoreOptions{TailBytes: 1, Compress: true})
	defer s.Close()
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	writeWAL(t, s, 0, 2*testSeg+10, 100_000)
	s.CompactOnce()
	path := filepath.Join(dir, "wal", "000000010000000000000000.wz")
	b, _ := os.ReadFile(path)
	b[len(b)-100] ^= 0x55 // inside the last frame
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	s.cache.dropSegment(segKey{1, 0})
	_, _, err := s.Read(1, testSeg-1000, make([]byte, 1000))
	var ce *CorruptError
	if !errors.As(err, &ce) || !errors.Is(err, ErrCorrupt) || ce.Frame != testSeg/ZFrameSize-1 {
		t.Fatalf("read of a damaged frame: %v", err)
	}
	// Frames before it are intact and still served.
	if _, _, err := s.Read(1, 0, make([]byte, 1000)); err != nil {
		t.Errorf("intact frame: %v", err)
	}
	raw := waltest.Generate(testSysID, testSeg, 1, 0, testSeg)
	if err := s.ReplaceSegment(1, 0, raw); err != nil {
		t.Fatal(err)
	}
	got, _, err := s.Read(1, testSeg-1000, make([]byte, 1000))
	if err != nil || !bytes.Equal(got, raw[testSeg-1000:]) {
		t.Fatalf("after replacement: %v", err)
	}
}

// A store compressing with S2 reads back the same WAL, also after being
// reopened with zstd (files of either codec are read whatever the option).
func TestS2CompactedSegmentsReadBack(t *testing.T) {
	dir := t.TempDir()
	s, err := OpenStore(dir, StoreOptions{TailBytes: 1, Compress: true, Codec: CodecS2})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	end := recordEnd(2*testSeg + 20_000)
	writeWAL(t, s, 0, end, 100_000)
	if n, err := s.CompactOnce(); err != nil || n != 2 {
		t.Fatalf("CompactOnce = %d, %v", n, err)
	}
	want := waltest.Generate(testSysID, testSeg, 1, 0, int(end))
	if got := readAll(t, s, 0, end); !bytes.Equal(got, want) {
		t.Fatal("S2-compressed store reads back different WAL")
	}
	s.Close()
	s2, err := OpenStore(dir, StoreOptions{Compress: true, Codec: CodecZstd})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	if got := readAll(t, s2, 0, end); !bytes.Equal(got, want) {
		t.Fatal("S2 files reopened by a zstd store read back different WAL")
	}
	if _, err := OpenStore(t.TempDir(), StoreOptions{Codec: "lz4"}); err == nil {
		t.Fatal("an unknown codec was accepted")
	}
}

// The compactor's rests come between frames and change nothing in the file:
// a paced encoding is byte-identical to an unpaced one, and pause hears of
// every frame with the time it took.
func TestPacedCompactionSameBytes(t *testing.T) {
	raw := make([]byte, 4*ZFrameSize+1000)
	for i := range raw {
		raw[i] = byte(i / 97)
	}
	var calls int
	var took time.Duration
	paced := encodeZSegmentPaced(raw, codecZstd, func(d time.Duration) { calls++; took += d })
	if !bytes.Equal(paced, encodeZSegment(raw, codecZstd)) {
		t.Fatal("a paced encoding differs from an unpaced one")
	}
	if calls != 5 || took <= 0 {
		t.Errorf("pause called %d times over %v, want once per frame (5) with the time taken", calls, took)
	}
}

// The compactor's rests end with its context: a relay that is stopping
// does not wait out a paced segment.
func TestCompactorRestEndsWithContext(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	done := make(chan struct{})
	go func() { rest(ctx, time.Hour); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		t.Fatal("rest waited out its hour after the context ended")
	}
}
