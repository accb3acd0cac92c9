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

// While the tail grows, each new segment's memory was made, and its pages
// touched, in the background beforehand; once segments leave the tail their
// memory is used again and nothing more is made.
func TestGrowingTailMemoryPreparedAhead(t *testing.T) {
	s, err := OpenStore(t.TempDir(), StoreOptions{TailBytes: 3 * testSeg})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Bind(testID, "15")
	s.StartAt(1, 0)
	bufOf := func(no uint64) *memBuf {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.segs[segKey{1, no}].buf
	}
	fresh := func() *memBuf {
		s.spareWG.Wait()
		return s.fresh.Load()
	}
	end := LSN(0)
	writeInto := func(no uint64) {
		t.Helper()
		to := LSN(no*testSeg + 5*PageSize)
		writeWAL(t, s, end, to, 40_000)
		end = to
	}
	writeInto(0)
	first := bufOf(0)
	for no := uint64(1); no < 3; no++ { // the tail grows to 3 segments
		prepared := fresh()
		if prepared == nil {
			t.Fatalf("no memory prepared for segment %d while the tail grows", no)
		}
		writeInto(no)
		if got := bufOf(no); got != prepared {
			t.Fatalf("segment %d did not get the memory prepared for it", no)
		}
	}
	// Segment 3 takes the memory prepared during segment 2, and segment 0
	// leaves the tail: its memory is there for segment 4, so none is made.
	prepared := fresh()
	writeInto(3)
	if bufOf(3) != prepared {
		t.Fatal("segment 3 did not get the memory prepared for it")
	}
	if f := fresh(); f != nil {
		t.Fatal("memory prepared although a retired buffer is there")
	}
	writeInto(4)
	if bufOf(4) != first {
		t.Fatal("segment 4 did not reuse segment 0's memory")
	}
	if f := fresh(); f != nil {
		t.Fatal("memory prepared with the tail full")
	}
}
