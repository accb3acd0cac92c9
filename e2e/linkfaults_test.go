package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// The relay's upstream link flaps (cut every 2 s) under pgbench, then the
// parent stalls in the middle of a message (the link blackholed for 4 s),
// then it is slow (20 ms per chunk). The standby below converges with equal
// tables, and WAL received through the relay is byte-identical to WAL
// received straight from the primary.
func TestUpstreamLinkFaults(t *testing.T) {
	t.Parallel() // waits on restarts, faults and timers more than it uses the CPU
	requirePG(t)
	ctx := context.Background()
	primary := newPgbenchPrimary(t, 1)
	proxy := startFaultProxy(t, fmt.Sprintf("127.0.0.1:%d", primary.Port))
	relay := startRelay(t, "r1", fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable", proxy.Port()))
	s := newStandby(t, primary, "s", relay.Conninfo())
	waitStreaming(t, relay, 1, 30*time.Second)
	bin := requirePG(t)
	direct := receiveWAL(t, bin, "direct", "127.0.0.1", primary.Port)
	via := receiveWAL(t, bin, "via", "127.0.0.1", relay.Port())

	load := make(chan error, 1)
	go func() { load <- primary.Pgbench(ctx, 2, 24*time.Second) }()
	for i := 0; i < 5; i++ {
		time.Sleep(2 * time.Second)
		proxy.Cut()
	}
	time.Sleep(time.Second)
	proxy.SetBlackhole(true)
	time.Sleep(4 * time.Second)
	proxy.SetBlackhole(false)
	proxy.SetDelay(20 * time.Millisecond)
	time.Sleep(3 * time.Second)
	proxy.SetDelay(0)
	if err := <-load; err != nil {
		t.Fatal(err)
	}
	ups, _ := relay.Status(t)["upstream"].(map[string]any)
	t.Logf("after %d cuts, a 4 s stall and a slow link the relay is %v", proxy.cuts, ups["state"])
	assertConverged(t, primary, s)
	// Complete the current segment so both receivers hold it whole.
	for i := 0; i < 2; i++ {
		if err := primary.Exec(ctx, "INSERT INTO pgbench_history SELECT * FROM pgbench_history LIMIT 10; SELECT pg_switch_wal()"); err != nil {
			t.Fatal(err)
		}
	}
	end, _ := primary.CurrentLSN(ctx)
	waitRelayDurable(t, relay, end, 30*time.Second)
	time.Sleep(2 * time.Second) // let both receivers write what they were sent
	direct.Stop()
	via.Stop()
	n, err := pgcluster.CompareSegments(direct.Dir, via.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if n == 0 {
		t.Fatal("no completed segment to compare")
	}
	t.Logf("%d completed segments received through the relay equal those from the primary", n)
}
