package e2e

import (
	"context"
	"testing"
	"time"
)

// A relay named in synchronous_standby_names acknowledges commits once the
// WAL is durable on the relay: commits proceed while it runs and wait while
// it is down.
func TestRelayAsSynchronousStandby(t *testing.T) {
	requirePG(t)
	primary := newPrimary(t, "primary", map[string]string{"synchronous_standby_names": "r1"})
	ctx := context.Background()
	relay := startRelay(t, "r1", primary.ReplicationConnString())
	waitFor(t, 30*time.Second, "relay r1 as the synchronous standby", func() (bool, error) {
		conn, err := primary.Connect(ctx)
		if err != nil {
			return false, err
		}
		defer conn.Close(ctx)
		var state string
		err = conn.QueryRow(ctx, "SELECT sync_state FROM pg_stat_replication WHERE application_name = 'r1'").Scan(&state)
		return err == nil && state == "sync", nil
	})
	cctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := primary.Exec(cctx, "CREATE TABLE t(i int); INSERT INTO t VALUES (1)"); err != nil {
		t.Fatalf("commit with the relay up: %v", err)
	}
	relay.Kill()
	wctx, wcancel := context.WithTimeout(ctx, 2*time.Second)
	defer wcancel()
	if err := primary.Exec(wctx, "INSERT INTO t VALUES (2)"); err == nil {
		t.Fatal("commit returned while the synchronous relay was down")
	}
	relay.Restart(t)
	cctx2, cancel2 := context.WithTimeout(ctx, 30*time.Second)
	defer cancel2()
	if err := primary.Exec(cctx2, "INSERT INTO t VALUES (3)"); err != nil {
		t.Fatalf("commit after the relay came back: %v", err)
	}
}
