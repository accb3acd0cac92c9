package e2e

import (
	"context"
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// Crash consistency: the relay is SIGKILLed at a random moment of a
// pgbench run, again and again (WALRELAY_CRASH_RUNS, default 5), and
// restarted each time. After every restart both standbys converge with the
// primary's tables, and at the end every completed segment in the store is
// byte-identical to the primary's.
func TestRelayCrashLoop(t *testing.T) {
	t.Parallel() // waits on restarts, faults and timers more than it uses the CPU
	requirePG(t)
	runs := 5
	if v, err := strconv.Atoi(os.Getenv("WALRELAY_CRASH_RUNS")); err == nil && v > 0 {
		runs = v
	}
	ctx := context.Background()
	primary := newPgbenchPrimary(t, 1)
	relay := startRelay(t, "r1", primary.ReplicationConnString(), "--log-level", "info")
	s1 := newStandby(t, primary, "s1", relay.Conninfo())
	s2 := newStandby(t, primary, "s2", relay.Conninfo())
	bin := requirePG(t)
	direct := receiveWAL(t, bin, "direct", "127.0.0.1", primary.Port)
	// A relay-local slot pins everything written from here on, across the
	// crashes; pg_receivewal reads it all back from the store at the end.
	waitStreaming(t, relay, 2, 60*time.Second)
	createRelaySlot(t, relay, "verify")
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
	for i := 0; i < runs; i++ {
		load := make(chan error, 1)
		go func() { load <- primary.Pgbench(ctx, 2, 4*time.Second) }()
		at := time.Duration(200+rng.IntN(3000)) * time.Millisecond
		time.Sleep(at)
		relay.Kill()
		relay.Restart(t)
		if err := <-load; err != nil {
			t.Fatal(err)
		}
		waitStreaming(t, relay, 2, 60*time.Second)
		assertConverged(t, primary, s1, s2)
		t.Logf("run %d: killed %s into pgbench; restarted, both standbys converged", i+1, at)
	}
	for i := 0; i < 2; i++ {
		if err := primary.Exec(ctx, "INSERT INTO pgbench_history SELECT * FROM pgbench_history LIMIT 10; SELECT pg_switch_wal()"); err != nil {
			t.Fatal(err)
		}
	}
	target, _ := primary.CurrentLSN(ctx)
	waitRelayDurable(t, relay, target, 30*time.Second)
	via := receiveWAL(t, bin, "via", "127.0.0.1", relay.Port(), "--slot", "verify")
	time.Sleep(3 * time.Second) // let both receivers write what they were sent
	direct.Stop()
	via.Stop()
	n, err := pgcluster.CompareSegments(direct.Dir, via.Dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("after %d crashes, %d completed segments received through the relay equal those from the primary", runs, n)
}
