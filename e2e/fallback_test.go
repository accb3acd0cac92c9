package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"
)

// The static fallback that needs no manager: a standby whose
// primary_conninfo lists two relays (host=a,b port=p,q) streams from the
// first, and when it dies, libpq's multi-host connection moves the WAL
// receiver to the second. The standby converges under load.
func TestMultiHostConninfoFallback(t *testing.T) {
	requirePG(t)
	ctx := context.Background()
	primary := newPgbenchPrimary(t, 1)
	r1 := startRelay(t, "r1", primary.ReplicationConnString())
	r2 := startRelay(t, "r2", primary.ReplicationConnString())
	conninfo := fmt.Sprintf("host=127.0.0.1,127.0.0.1 port=%d,%d user=postgres sslmode=disable", r1.Port(), r2.Port())
	s := newStandbyWith(t, primary, "s", conninfo, map[string]string{"wal_retrieve_retry_interval": "1s"})
	waitFor(t, 30*time.Second, "standby streaming from r1", func() (bool, error) {
		port, streaming, err := receiverOf(ctx, s)
		return err == nil && streaming && port == r1.Port(), nil
	})
	load := make(chan error, 1)
	go func() { load <- primary.Pgbench(ctx, 2, 6*time.Second) }()
	time.Sleep(2 * time.Second)
	r1.Kill()
	killed := time.Now()
	waitFor(t, 30*time.Second, "standby streaming from r2", func() (bool, error) {
		port, streaming, err := receiverOf(ctx, s)
		return err == nil && streaming && port == r2.Port(), nil
	})
	t.Logf("the standby streams from r2 %.1fs after r1 was killed", time.Since(killed).Seconds())
	if err := <-load; err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, s)
}
