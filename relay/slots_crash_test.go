package relay

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"testing"

	"github.com/walrelay/walrelay/internal/vfs"
	"github.com/walrelay/walrelay/walstream"
)

// Relay-local slots under simulated power loss (internal/vfs.CrashFS): a
// random mix of creates, advances, flushes and drops, with the file system
// cloned as a power loss could leave it before random file operations. Each
// clone must open, and every slot in it must be one that was created and not
// dropped, with a restart_lsn between what the last completed flush wrote
// and what its client last reported: never behind what the relay made
// durable, never ahead of what the client flushed. A slot whose create
// returned is there; one whose drop returned is gone.
func TestSlotsSurvivePowerLoss(t *testing.T) {
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	const crashes = 500
	rng := rand.New(rand.NewPCG(seed, 1))
	crashRNG := rand.New(rand.NewPCG(seed, 2))
	log := slog.New(slog.DiscardHandler)

	// What the test knows about each slot, at each moment.
	type want struct {
		created, dropped bool          // create / drop returned
		dropping         bool          // drop called, not returned
		flushed          walstream.LSN // restart_lsn at the last completed flush (or create)
		reported         walstream.LSN // the last restart_lsn the client reported
	}
	type point struct {
		fs    *vfs.CrashFS
		state map[string]want
		op    string
	}
	var (
		mu     sync.Mutex
		state  = map[string]want{}
		points []point
	)
	snapshot := func() map[string]want {
		c := make(map[string]want, len(state))
		for k, v := range state {
			c[k] = v
		}
		return c
	}
	const dir = "/relay/slots"
	cfs := vfs.NewCrashFS()
	if err := cfs.MkdirAll("/relay", 0o700); err != nil {
		t.Fatal(err)
	}
	if err := cfs.SyncDir("/"); err != nil {
		t.Fatal(err)
	}
	cfs.SetFault(func(op vfs.Op, p string) error {
		mu.Lock()
		defer mu.Unlock()
		if crashRNG.IntN(2) == 0 {
			points = append(points, point{fs: cfs.Crash(crashRNG), state: snapshot(), op: op.String() + " " + p})
		}
		return nil
	})
	ss, err := openSlotStore(cfs, dir, log)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"a", "b", "c", "d"}
	for len(points) < crashes {
		name := names[rng.IntN(len(names))]
		mu.Lock()
		w := state[name]
		mu.Unlock()
		switch {
		case !w.created || w.dropped:
			// Slots are named anew after a drop so that "gone" and
			// "there" stay tellable apart.
			if w.dropped {
				name = fmt.Sprintf("%s%d", name[:1], rng.IntN(1_000_000))
			}
			restart := walstream.LSN(rng.IntN(1 << 20))
			if err := ss.create(name, false, restart, 1, false); err != nil {
				continue
			}
			mu.Lock()
			state[name] = want{created: true, flushed: restart, reported: restart}
			mu.Unlock()
		case rng.IntN(10) == 0:
			mu.Lock()
			w.dropping = true
			state[name] = w
			mu.Unlock()
			if err := ss.drop(name); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			state[name] = want{created: true, dropped: true}
			mu.Unlock()
		case rng.IntN(4) == 0:
			mu.Lock()
			snap := snapshot()
			mu.Unlock()
			if err := ss.flush(); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			for n, v := range snap {
				if v.created && !v.dropped {
					v.flushed = v.reported
					state[n] = v
				}
			}
			mu.Unlock()
		default:
			to := w.reported + walstream.LSN(rng.IntN(1<<16))
			// Reported first: a crash inside advance may keep it.
			mu.Lock()
			w.reported = to
			state[name] = w
			mu.Unlock()
			ss.advance(name, to)
		}
	}
	cfs.SetFault(nil)

	for i, p := range points {
		got, err := openSlotStore(p.fs, dir, log)
		if err != nil {
			t.Fatalf("crash %d (before %s): slots do not open: %v", i, p.op, err)
		}
		have := map[string]SlotStatus{}
		for _, sl := range got.list() {
			have[sl.Name] = sl
		}
		for name, w := range p.state {
			sl, ok := have[name]
			switch {
			case w.dropped && ok:
				t.Fatalf("crash %d (before %s): slot %s is back after its drop returned", i, p.op, name)
			case w.created && !w.dropped && !w.dropping && !ok:
				t.Fatalf("crash %d (before %s): slot %s is gone though its create returned", i, p.op, name)
			case ok && (sl.RestartLSN < w.flushed || sl.RestartLSN > w.reported):
				t.Fatalf("crash %d (before %s): slot %s restart_lsn %s, want between %s (flushed) and %s (reported)",
					i, p.op, name, sl.RestartLSN, w.flushed, w.reported)
			}
			delete(have, name)
		}
		// A slot not in the state is one whose create or drop was under
		// way at the crash: there or not, both are right.
	}
	t.Logf("%d crashes: every slot there as created, none back from a drop, restart_lsn within what was flushed and reported", len(points))
}
