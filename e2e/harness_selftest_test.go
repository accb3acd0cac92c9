package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// These tests use no relay: they prove the harness itself against plain
// PostgreSQL streaming, so a failure elsewhere is walrelay's, not the
// harness's.

func TestHarnessDirectStandby(t *testing.T) {
	requirePG(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	primary := newPrimary(t, "primary", nil)
	standby := newStandby(t, primary, "standby", primary.ReplicationConnString())
	waitStreamingFrom(t, primary, "standby")

	if err := primary.PgbenchInit(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := primary.Pgbench(ctx, 4, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	target, err := primary.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	if err := standby.WaitReplayed(wctx, target); err != nil {
		t.Fatal(err)
	}
	if err := primary.CompareTables(ctx, pgcluster.PgbenchTables, standby); err != nil {
		t.Error(err)
	}
	for _, table := range pgcluster.PgbenchTables {
		if sum, err := primary.TableChecksum(ctx, table); err != nil || sum == "empty" {
			t.Errorf("%s on the primary: %q %v: the comparison would prove nothing", table, sum, err)
		}
	}
}

func TestHarnessReceiveWAL(t *testing.T) {
	bin := requirePG(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	primary := newPrimary(t, "primary", nil)
	a := receiveWAL(t, bin, "a", "127.0.0.1", primary.Port)
	b := receiveWAL(t, bin, "b", "127.0.0.1", primary.Port)
	waitFor(t, 30*time.Second, "two pg_receivewal streaming", func() (bool, error) {
		return countStreaming(ctx, primary, "pg_receivewal") == 2, nil
	})

	// Fill and switch segments; both receivers started in the first one.
	const switches = 4
	var last string
	for i := range switches {
		if err := primary.Exec(ctx, fmt.Sprintf("CREATE TABLE fill%d AS SELECT g, md5(g::text) AS pad FROM generate_series(1, 20000) g", i)); err != nil {
			t.Fatal(err)
		}
		lsn, err := primary.CurrentLSN(ctx)
		if err != nil {
			t.Fatal(err)
		}
		last = walFileName(lsn)
		if err := primary.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []*pgcluster.WALReceiver{a, b} {
		waitFor(t, 30*time.Second, "segment "+last+" completed by pg_receivewal "+r.Name, func() (bool, error) {
			_, err := os.Stat(filepath.Join(r.Dir, last))
			return err == nil, nil
		})
	}
	for _, r := range []*pgcluster.WALReceiver{a, b} {
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	n, err := pgcluster.CompareSegments(a.Dir, b.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if n < switches {
		t.Errorf("compared %d segments, want at least %d", n, switches)
	}
	t.Logf("%d segments byte-identical", n)
}

// walFileName is the segment holding lsn on timeline 1 (16 MiB segments).
func walFileName(lsn uint64) string {
	seg := lsn / (16 << 20)
	return fmt.Sprintf("%08X%08X%08X", 1, seg/0x100, seg%0x100)
}

// waitStreamingFrom waits until a walsender on c streams to application_name.
func waitStreamingFrom(t testing.TB, c *pgcluster.Cluster, app string) {
	t.Helper()
	waitFor(t, 30*time.Second, app+" streaming from "+c.Name, func() (bool, error) {
		return countStreaming(context.Background(), c, app) == 1, nil
	})
}

// countStreaming counts c's walsenders in state streaming for app; -1 on error.
func countStreaming(ctx context.Context, c *pgcluster.Cluster, app string) int {
	conn, err := c.Connect(ctx)
	if err != nil {
		return -1
	}
	defer conn.Close(context.Background())
	var n int
	err = conn.QueryRow(ctx, "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND application_name = $1", app).Scan(&n)
	if err != nil {
		return -1
	}
	return n
}
