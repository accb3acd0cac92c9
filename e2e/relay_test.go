package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// assertConverged waits until every standby has replayed the primary's
// current flush position and checks that their pgbench tables match.
func assertConverged(t testing.TB, primary *pgcluster.Cluster, standbys ...*pgcluster.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// A checkpoint-free marker write makes sure the final position carries
	// a commit the standbys must replay.
	if err := primary.Exec(ctx, "CREATE TABLE IF NOT EXISTS walrelay_marker(id int); INSERT INTO walrelay_marker VALUES (1)"); err != nil {
		t.Fatal(err)
	}
	target, err := primary.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range standbys {
		if err := sb.WaitReplayed(ctx, target); err != nil {
			t.Fatalf("standby %s: %v", sb.Name, err)
		}
	}
	if err := primary.CompareTables(ctx, pgcluster.PgbenchTables, standbys...); err != nil {
		t.Error(err)
	}
	t.Logf("%d standbys replayed %s with matching checksums", len(standbys), pgcluster.FormatLSN(target))
}

// Three unmodified standbys stream through one relay under pgbench; each
// reaches the primary's final LSN with identical table contents.
func TestStandbysThroughRelay(t *testing.T) {
	t.Parallel() // waits on restarts, faults and timers more than it uses the CPU
	requirePG(t)
	primary := newPgbenchPrimary(t, 2)
	ctx := context.Background()
	relay := startRelay(t, "r1", primary.ReplicationConnString())
	var standbys []*pgcluster.Cluster
	for i := 1; i <= 3; i++ {
		standbys = append(standbys, newStandby(t, primary, fmt.Sprintf("standby%d", i), relay.Conninfo()))
	}
	// Every standby is connected to the relay, not the primary.
	waitStreaming(t, relay, 3, 30*time.Second)
	if err := primary.Pgbench(ctx, 4, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, standbys...)
	if n := primaryWalsenders(t, primary); n != 1 {
		t.Errorf("primary has %d walsenders, want 1 (the relay)", n)
	}
}

// waitStreaming waits until n children stream from the relay.
func waitStreaming(t testing.TB, r *relayProc, n int, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("%d children streaming from relay %s", n, r.ID), func() (bool, error) {
		ds, _ := r.Status(t)["downstreams"].([]any)
		got := 0
		for _, d := range ds {
			if m, ok := d.(map[string]any); ok && m["state"] == "streaming" {
				got++
			}
		}
		return got == n, nil
	})
}

func primaryWalsenders(t *testing.T, c *pgcluster.Cluster) int {
	t.Helper()
	conn, err := c.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_stat_replication").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// WAL received through the relay is byte-identical to WAL received straight
// from the primary.
func TestReceiveWALByteIdentical(t *testing.T) {
	bin := requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	ctx := context.Background()
	relay := startRelay(t, "r1", primary.ReplicationConnString())
	base := t.TempDir()
	direct, err := pgcluster.ReceiveWAL(ctx, bin, base, "direct", "127.0.0.1", primary.Port)
	if err != nil {
		t.Fatal(err)
	}
	via, err := pgcluster.ReceiveWAL(ctx, bin, base, "via-relay", "127.0.0.1", relay.Port())
	if err != nil {
		t.Fatal(err)
	}
	if err := primary.Pgbench(ctx, 4, 8*time.Second); err != nil {
		t.Fatal(err)
	}
	// Complete the current segment so both sides hold it whole.
	for i := 0; i < 2; i++ {
		if err := primary.Exec(ctx, "INSERT INTO pgbench_history SELECT * FROM pgbench_history LIMIT 10; SELECT pg_switch_wal()"); err != nil {
			t.Fatal(err)
		}
	}
	target, _ := primary.CurrentLSN(ctx)
	waitRelayDurable(t, relay, target, 60*time.Second)
	time.Sleep(2 * time.Second) // let both receivers write what they were sent
	if err := direct.Stop(); err != nil {
		t.Logf("direct pg_receivewal: %v", err)
	}
	if err := via.Stop(); err != nil {
		t.Logf("relayed pg_receivewal: %v", err)
	}
	n, err := pgcluster.CompareSegments(direct.Dir, via.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if n < 2 {
		t.Fatalf("only %d segments compared", n)
	}
	t.Logf("%d completed segments byte-identical (direct vs through the relay)", n)
}

func relayDurable(t testing.TB, r *relayProc) uint64 {
	st := r.Status(t)
	s, _ := st["durable_lsn"].(string)
	lsn, _ := pgcluster.ParseLSN(s)
	return lsn
}

// waitRelayDurable waits until the relay's durable end reaches lsn.
func waitRelayDurable(t testing.TB, r *relayProc, lsn uint64, timeout time.Duration) {
	t.Helper()
	waitFor(t, timeout, fmt.Sprintf("relay %s durable at %s", r.ID, pgcluster.FormatLSN(lsn)), func() (bool, error) {
		return relayDurable(t, r) >= lsn, nil
	})
}

// createRelaySlot creates a physical slot on the relay that reserves WAL.
func createRelaySlot(t testing.TB, r *relayProc, name string) {
	t.Helper()
	relayReplicationCommand(t, r, fmt.Sprintf(`CREATE_REPLICATION_SLOT %q PHYSICAL RESERVE_WAL`, name))
}

// dropRelaySlot drops a relay-local slot.
func dropRelaySlot(t testing.TB, r *relayProc, name string) {
	t.Helper()
	relayReplicationCommand(t, r, fmt.Sprintf(`DROP_REPLICATION_SLOT %q`, name))
}

// relayReplicationCommand runs one replication command on the relay.
func relayReplicationCommand(t testing.TB, r *relayProc, cmd string) {
	t.Helper()
	ctx := context.Background()
	conn, err := pgconn.Connect(ctx, r.Conninfo()+" replication=true")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, cmd).ReadAll(); err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
}
