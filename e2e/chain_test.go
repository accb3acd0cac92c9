package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// Relays chain: primary -> relay A -> relay B -> standbys. The standbys
// converge, and pg_receivewal at the end of the chain gets segments
// byte-identical to pg_receivewal straight from the primary.
func TestRelayChain(t *testing.T) {
	bin := requirePG(t)
	primary := newPgbenchPrimary(t, 2)
	ctx := context.Background()
	a := startRelay(t, "a", primary.ReplicationConnString())
	b := startRelay(t, "b", a.Conninfo())
	s1 := newStandby(t, primary, "standby1", b.Conninfo())
	s2 := newStandby(t, primary, "standby2", a.Conninfo())
	waitStreaming(t, b, 1, 30*time.Second)
	base := t.TempDir()
	direct, err := pgcluster.ReceiveWAL(ctx, bin, base, "direct", "127.0.0.1", primary.Port)
	if err != nil {
		t.Fatal(err)
	}
	chained, err := pgcluster.ReceiveWAL(ctx, bin, base, "chained", "127.0.0.1", b.Port())
	if err != nil {
		t.Fatal(err)
	}
	if err := primary.Pgbench(ctx, 4, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := primary.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, s1, s2)
	target, _ := primary.CurrentLSN(ctx)
	waitFor(t, 30*time.Second, "relay b durable at the primary's LSN", func() (bool, error) {
		return relayDurable(t, b) >= target, nil
	})
	time.Sleep(time.Second)
	direct.Stop()
	chained.Stop()
	n, err := pgcluster.CompareSegments(direct.Dir, chained.Dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d segments byte-identical through two relays", n)
	// Relay B streams from A through a slot on A, and A's /status shows it.
	slots, _ := a.Status(t)["slots"].([]any)
	found := false
	for _, s := range slots {
		if m, ok := s.(map[string]any); ok && m["name"] == "walrelay_b" && m["active"] == true {
			found = true
		}
	}
	if !found {
		t.Errorf("relay a has no active slot walrelay_b: %v", slots)
	}
}
