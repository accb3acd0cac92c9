package walstream

import (
	"bytes"
	"testing"

	"github.com/walrelay/walrelay/internal/waltest"
)

// A segment's memory is used again for a later segment once it has left the
// tail, but never while a reader holds a view of it.
func TestTailMemoryReusedOnlyWhenUnpinned(t *testing.T) {
	s, err := OpenStore(t.TempDir(), StoreOptions{TailBytes: testSeg}) // the writer's segment only
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	wal := waltest.Generate(testSysID, testSeg, 1, 0, 6*testSeg)
	bufOf := func(no uint64) *memBuf {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.segs[segKey{1, no}].buf
	}
	writeWAL(t, s, 0, testSeg-PageSize, 50_000)
	first := bufOf(0)
	view, pin, err := s.Read(1, 0, make([]byte, 4000))
	if err != nil || len(view) != 4000 || pin.m != first {
		t.Fatalf("read from the tail: %d bytes, pinned %v, %v", len(view), pin.m == first, err)
	}
	// Segments 0 and 1 leave the tail; 0 is pinned, so segment 2 gets new
	// memory and segment 3 takes segment 1's.
	writeWAL(t, s, testSeg-PageSize, 3*testSeg+100, 50_000)
	if b := bufOf(2); b == first {
		t.Fatal("a pinned buffer was reused")
	}
	if !bytes.Equal(view, wal[:4000]) {
		t.Fatal("a view changed under its reader")
	}
	pin.Release()
	writeWAL(t, s, 3*testSeg+100, 4*testSeg+100, 50_000)
	if b := bufOf(4); b != first {
		t.Fatal("a released buffer was not reused")
	}
	if got := readAll(t, s, 0, 4*testSeg+100); !bytes.Equal(got, wal[:4*testSeg+100]) {
		t.Fatal("WAL read back differs")
	}
}
