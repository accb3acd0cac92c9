package walstream

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/walrelay/walrelay/internal/vfs"
	"github.com/walrelay/walrelay/internal/waltest"
)

// Power loss, simulated: the store runs on a crashable file system
// (internal/vfs.CrashFS) fed with a WAL stream of real record structure
// (internal/waltest), and at random points between and inside its file
// operations the file system is cloned as a power loss could leave it: what
// was synced, plus any subset of the unsynced writes, torn at sectors,
// zeroed or stale, and any prefix of the unsynced renames, creates and
// removes. Each clone is recovered and must hold:
//   - a prefix of the stream, ending on a record boundary;
//   - at or past the last record end acknowledged (returned by Sync) before
//     the crash;
//   - no leftover or half-renamed file: only segments (raw or compressed),
//     one .partial, and the history file, whole, if it was written.
//
// WALRELAY_CRASHES sets how many crashes (default 2000, 200 under the race
// detector: `make test` runs it both ways; `make crash` runs many more);
// WALRELAY_CRASH_SEED replays one run.

type crashPoint struct {
	fs      *vfs.CrashFS
	acked   LSN  // the last end Sync returned before the crash
	history bool // WriteHistory had returned
	op      string
	serial  int
}

var crashHistory = []byte("1\t0/2A0000\tno recovery target specified\n")

func crashCount(t *testing.T) int {
	n := 2000
	if raceEnabled {
		n = 200
	}
	if v := os.Getenv("WALRELAY_CRASHES"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil {
			t.Fatalf("WALRELAY_CRASHES=%q: %v", v, err)
		}
	}
	return n
}

func crashSeed(t *testing.T) uint64 {
	if v := os.Getenv("WALRELAY_CRASH_SEED"); v != "" {
		s, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			t.Fatalf("WALRELAY_CRASH_SEED=%q: %v", v, err)
		}
		return s
	}
	return rand.Uint64()
}

func TestStoreSurvivesPowerLoss(t *testing.T) {
	total := crashCount(t)
	seed := crashSeed(t)
	t.Logf("seed %d (WALRELAY_CRASH_SEED=%d replays it), %d crashes", seed, seed, total)
	for i, compress := range []bool{false, true} {
		t.Run(fmt.Sprintf("compress=%v", compress), func(t *testing.T) {
			crashes := powerLossRun(t, seed+uint64(i), total/2, compress)
			t.Logf("%d crashes recovered", crashes)
		})
	}
}

// powerLossRun drives stores, each for a few segments of WAL, and checks n
// crashes of them; it returns how many were checked.
func powerLossRun(t *testing.T, seed uint64, n int, compress bool) int {
	// One stream for every store of the run: each writes its prefix.
	const lifeLen = 2*testSeg + testSeg/2 // two segments completed, a third begun
	stream := waltest.Generate(testSysID, testSeg, 1, 0, lifeLen)
	checked := 0
	for life := uint64(0); checked < n; life++ {
		checked += powerLossLife(t, seed+life<<8, n-checked, compress, stream)
		if t.Failed() {
			break
		}
	}
	return checked
}

// powerLossLife drives one store through stream and checks up to n of its
// crashes.
func powerLossLife(t *testing.T, seed uint64, n int, compress bool, stream []byte) int {
	const storeDir = "/relay/store"
	rng := rand.New(rand.NewPCG(seed, 1))
	cfs := vfs.NewCrashFS()
	// The relay's data directory exists, durably, before the store does.
	if err := cfs.MkdirAll("/relay", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := cfs.SyncDir("/"); err != nil {
		t.Fatal(err)
	}

	// Crash points are taken by the fault hook, before a file operation
	// (from the writer, or the goroutine preparing the next segment file).
	var (
		mu       sync.Mutex
		crashRNG = rand.New(rand.NewPCG(seed, 2))
		points   []crashPoint
		acked    atomic.Uint64
		history  atomic.Bool
		serial   int
	)
	cfs.SetFault(func(op vfs.Op, p string) error {
		mu.Lock()
		defer mu.Unlock()
		serial++
		if len(points) < n && crashRNG.IntN(3) == 0 {
			// What was acknowledged before the crash: read first.
			ack, hist := LSN(acked.Load()), history.Load()
			points = append(points, crashPoint{fs: cfs.Crash(crashRNG), acked: ack, history: hist, op: op.String() + " " + p, serial: serial})
		}
		return nil
	})
	s, err := OpenStore(storeDir, StoreOptions{FS: cfs, TailBytes: 2 * testSeg, Compress: compress})
	if err != nil {
		t.Fatal(err)
	}
	s.inlineSpare = true
	defer s.Close()
	if err := s.Bind(testID, "15.18"); err != nil {
		t.Fatal(err)
	}
	if err := s.StartAt(1, 0); err != nil {
		t.Fatal(err)
	}
	var pos LSN
	for int(pos) < len(stream) {
		// Messages of the sizes a walsender sends: mostly small commits,
		// sometimes up to 128 KiB.
		size := 1 + rng.IntN(2000)
		if rng.IntN(8) == 0 {
			size = 1 + rng.IntN(128<<10)
		}
		size = min(size, len(stream)-int(pos))
		if err := s.Write(1, pos, stream[pos:int(pos)+size]); err != nil {
			t.Fatal(err)
		}
		pos += LSN(size)
		if rng.IntN(3) == 0 {
			end, err := s.Sync()
			if err != nil {
				t.Fatal(err)
			}
			acked.Store(uint64(end))
		}
		if !history.Load() && rng.IntN(100) == 0 {
			// A history file, as when the parent's timeline changes.
			if err := s.WriteHistory(2, crashHistory); err != nil {
				t.Fatal(err)
			}
			history.Store(true)
		}
		if compress && rng.IntN(50) == 0 {
			if _, err := s.CompactOnce(); err != nil {
				t.Fatal(err)
			}
		}
	}
	cfs.SetFault(nil)
	mu.Lock()
	batch := points
	mu.Unlock()
	for _, p := range batch {
		checkRecovery(t, storeDir, p, stream)
		if t.Failed() {
			break
		}
	}
	return len(batch)
}

// checkRecovery opens the store a crash left and checks what it holds.
func checkRecovery(t *testing.T, dir string, p crashPoint, stream []byte) {
	t.Helper()
	fail := func(format string, args ...any) {
		t.Helper()
		t.Fatalf("crash %d (before %s, acknowledged %s): "+format, append([]any{p.serial, p.op, p.acked}, args...)...)
	}
	s, err := OpenStore(dir, StoreOptions{FS: p.fs, TailBytes: testSeg})
	if err != nil {
		fail("recovery failed: %v", err)
	}
	defer s.Close()
	_, end := s.DurableEnd()
	if _, hasID := s.Identity(); !hasID {
		if p.acked != 0 {
			fail("the store lost its identity")
		}
		return
	}
	if want := LSN(waltest.RecordEndAtOrBefore(testSysID, testSeg, 1, uint64(p.acked))); end < want {
		fail("recovered end %s is behind the last acknowledged record end %s%s", end, want, explainTail(p.fs, dir, end, stream))
	}
	if end != 0 && LSN(waltest.RecordEndAtOrBefore(testSysID, testSeg, 1, uint64(end))) != end {
		fail("recovered end %s is not a record boundary", end)
	}
	if end > 0 {
		got := make([]byte, 0, end)
		buf := make([]byte, 256<<10)
		for pos := LSN(0); pos < end; {
			n, err := s.ReadAt(1, pos, buf[:min(len(buf), int(end-pos))])
			if err != nil || n == 0 {
				fail("read back at %s: %d bytes, %v", pos, n, err)
			}
			got = append(got, buf[:n]...)
			pos += LSN(n)
		}
		if int(end) > len(stream) || !bytes.Equal(got, stream[:end]) {
			fail("recovered WAL up to %s is not a prefix of the stream", end)
		}
	}
	if h, ok := s.History(2); ok && !bytes.Equal(h, crashHistory) || !ok && p.history {
		fail("history file of timeline 2: held %v, %q; written before the crash: %v", ok, h, p.history)
	}
	entries, err := p.fs.ReadDir(path.Join(dir, "wal"))
	if err != nil {
		fail("read wal directory: %v", err)
	}
	partials := 0
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".tmp"):
			fail("leftover %s after recovery", name)
		case strings.HasSuffix(name, PartialSuffix):
			partials++
		case name == HistoryFileName(2):
		default:
			if _, _, err := ParseSegmentFileName(strings.TrimSuffix(name, CompressedSuffix), testSeg); err != nil {
				fail("unexpected file %s", name)
			}
		}
	}
	if partials > 1 {
		fail("%d partial segments after recovery", partials)
	}
}

// explainTail says where a recovered segment's bytes first differ from the
// stream, for a failure message.
func explainTail(fsys vfs.FS, dir string, end LSN, stream []byte) string {
	no := end.SegmentNo(testSeg)
	name := path.Join(dir, "wal", SegmentFileName(1, no, testSeg)+PartialSuffix)
	b, err := fsys.ReadFile(name)
	if err != nil {
		return fmt.Sprintf(" (%s: %v)", name, err)
	}
	start := int(no * testSeg)
	for i := range b {
		if start+i >= len(stream) || b[i] != stream[start+i] {
			return fmt.Sprintf(" (%s: %d bytes, first differs from the stream at %s)", name, len(b), LSN(start+i))
		}
	}
	return fmt.Sprintf(" (%s: %d bytes, all equal to the stream)", name, len(b))
}
