package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// Relays chain: primary -> relay A -> relay B -> relay C -> 2 standbys, the
// relay-to-relay links zstd-compressed. Under pgbench the standbys converge,
// and pg_receivewal at the end of the chain gets segments byte-identical to
// pg_receivewal straight from the primary.
func TestRelayChain(t *testing.T) {
	t.Parallel() // waits on restarts, faults and timers more than it uses the CPU
	bin := requirePG(t)
	primary := newPgbenchPrimary(t, 2)
	ctx := context.Background()
	a := startRelay(t, "a", primary.ReplicationConnString())
	b := startRelay(t, "b", a.Conninfo())
	c := startRelay(t, "c", b.Conninfo())
	s1 := newStandby(t, primary, "standby1", c.Conninfo())
	s2 := newStandby(t, primary, "standby2", c.Conninfo())
	waitStreaming(t, c, 2, 30*time.Second)
	base := t.TempDir()
	direct, err := pgcluster.ReceiveWAL(ctx, bin, base, "direct", "127.0.0.1", primary.Port)
	if err != nil {
		t.Fatal(err)
	}
	chained, err := pgcluster.ReceiveWAL(ctx, bin, base, "chained", "127.0.0.1", c.Port())
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
	waitRelayDurable(t, c, target, 30*time.Second)
	time.Sleep(time.Second)
	direct.Stop()
	chained.Stop()
	n, err := pgcluster.CompareSegments(direct.Dir, chained.Dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d segments byte-identical through three relays", n)
	checkCompression(t, a, b)
	checkCompression(t, b, c)
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
	if up, _ := a.Status(t)["upstream"].(map[string]any); up["compression"] != nil {
		t.Errorf("link primary -> a compressed: %v", up["compression"])
	}
}

// checkCompression: the link from relay a to its child relay b is
// compressed to under a third of the WAL it carries; a's other children
// (PostgreSQL clients) get plain WAL.
func checkCompression(t *testing.T, a, b *relayProc) {
	t.Helper()
	bUp, _ := b.Status(t)["upstream"].(map[string]any)
	raw, _ := bUp["received_bytes"].(float64)
	wire, _ := bUp["received_wire_bytes"].(float64)
	if bUp["compression"] != "zstd" || raw == 0 {
		t.Fatalf("link %s -> %s: %v", a.ID, b.ID, bUp)
	}
	t.Logf("link %s -> %s: %.0f bytes of WAL in %.0f bytes on the wire (%.1fx)", a.ID, b.ID, raw, wire, raw/wire)
	if wire*3 > raw {
		t.Errorf("compressed link carries %.0f bytes for %.0f of WAL: more than a third", wire, raw)
	}
	ds, _ := a.Status(t)["downstreams"].([]any)
	for _, d := range ds {
		m, _ := d.(map[string]any)
		want := any(nil)
		if m["application_name"] == b.ID {
			want = "zstd"
		}
		if m["state"] == "streaming" && m["compression"] != want {
			t.Errorf("%s's child %v: compression %v, want %v", a.ID, m["application_name"], m["compression"], want)
		}
	}
}

// pg_basebackup -h RELAY -R makes a standby that streams from the relay
// without any edit: BASE_BACKUP passes through the relay chain to the
// primary, the WAL part is served by the relay.
func TestBaseBackupThroughRelay(t *testing.T) {
	bin := requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	ctx := context.Background()
	a := startRelay(t, "a", primary.ReplicationConnString())
	b := startRelay(t, "b", a.Conninfo())
	load := make(chan error, 1)
	go func() { load <- primary.Pgbench(ctx, 2, 6*time.Second) }()
	sb, err := pgcluster.BaseBackupFrom(ctx, bin, "127.0.0.1", b.Port(), pgcluster.Options{BaseDir: clusterBase(t), Name: "fromrelay"})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-load; err != nil {
		t.Fatal(err)
	}
	auto, _ := os.ReadFile(filepath.Join(sb.DataDir, "postgresql.auto.conf"))
	if !strings.Contains(string(auto), fmt.Sprintf("port=%d", b.Port())) {
		t.Fatalf("pg_basebackup -R did not point primary_conninfo at the relay:\n%s", auto)
	}
	startCluster(t, sb)
	assertConverged(t, primary, sb)
	waitStreaming(t, b, 1, 30*time.Second)
}

// Read-through backfill: a standby base-backed up from the primary before
// the relays started asks the end of the chain for WAL older than any relay
// holds; each relay fetches it from its parent and the standby converges.
func TestBackfillThroughChain(t *testing.T) {
	requirePG(t)
	primary := newPrimary(t, "primary", map[string]string{"wal_keep_size": "1GB"})
	ctx := context.Background()
	if err := primary.PgbenchInit(ctx, 1); err != nil {
		t.Fatal(err)
	}
	// The standby's backup, taken before any relay exists.
	sb, err := pgcluster.BaseBackup(ctx, primary, "", pgcluster.Options{BaseDir: clusterBase(t), Name: "early"})
	if err != nil {
		t.Fatal(err)
	}
	// Move the primary several segments on. Each switch follows a write:
	// pg_switch_wal at the start of a segment is a no-op, and the backup's
	// own switch may already have put the standby's copy at a segment end.
	for i := 0; i < 3; i++ {
		if err := primary.Exec(ctx, "CREATE TABLE IF NOT EXISTS backfill_filler (i int); INSERT INTO backfill_filler VALUES (1); SELECT pg_switch_wal()"); err != nil {
			t.Fatal(err)
		}
	}
	if err := primary.Pgbench(ctx, 2, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	a := startRelay(t, "a", primary.ReplicationConnString())
	b := startRelay(t, "b", a.Conninfo())
	oldest := func(r *relayProc) string { s, _ := r.Status(t)["oldest_lsn"].(string); return s }
	var before string
	waitFor(t, 30*time.Second, "relay b holding WAL", func() (bool, error) {
		before = oldest(b)
		v, err := pgcluster.ParseLSN(before)
		return err == nil && v != 0, nil
	})
	// The backup ends in segment 3 (or at its end): b must start past 4.
	if v, err := pgcluster.ParseLSN(before); err != nil || v <= 0x4000000 {
		t.Fatalf("relay b starts at %q (%v): the primary did not move past the standby's backup", before, err)
	}
	if err := sb.SetConf(map[string]string{"primary_conninfo": b.Conninfo() + " application_name=early"}); err != nil {
		t.Fatal(err)
	}
	startCluster(t, sb)
	assertConverged(t, primary, sb)
	t.Logf("relay b held WAL from %s before the standby came, from %s after; relay a from %s", before, oldest(b), oldest(a))
	// b's own slot on a is not mirrored on the primary (--mirror-slots is
	// for clients' slots): the primary feeds relay a alone.
	conn, err := primary.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(context.Background(), "SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'walrelay_b'").Scan(&n); err != nil || n != 0 {
		t.Errorf("relay b's slot is on the primary too (%d, %v)", n, err)
	}
	if oldest(b) == before {
		t.Errorf("relay b did not backfill (oldest still %s)", before)
	}
}
