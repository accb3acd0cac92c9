package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// A byte flipped in a compressed segment of the relay's store is caught by
// the frame checksum: the child reading it still gets correct WAL (the
// segment is fetched again from upstream), and the event is logged and
// counted.
func TestCorruptStoreSegmentRefetched(t *testing.T) {
	bin := requirePG(t)
	primary := newPrimary(t, "primary", map[string]string{"wal_keep_size": "1GB"})
	ctx := context.Background()
	relay := startRelay(t, "r1", primary.ReplicationConnString(), "--memory-tail", "16MB")
	createRelaySlot(t, relay, "reader")
	// A few segments of WAL, so the first ones are compressed and out of
	// the memory tail.
	if err := primary.Exec(ctx, "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 4) AS pad FROM generate_series(1, 300000) g; SELECT pg_switch_wal()"); err != nil {
		t.Fatal(err)
	}
	target, _ := primary.CurrentLSN(ctx)
	waitRelayDurable(t, relay, target, time.Minute)
	walDir := filepath.Join(relay.DataDir, "wal")
	var victim string
	waitFor(t, 30*time.Second, "a compressed segment", func() (bool, error) {
		matches, _ := filepath.Glob(filepath.Join(walDir, "*.wz"))
		if len(matches) < 2 {
			return false, nil
		}
		victim = matches[0]
		return true, nil
	})
	b, err := os.ReadFile(victim)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(victim, b, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Logf("flipped a byte in %s", filepath.Base(victim))

	recv, err := pgcluster.ReceiveWAL(ctx, bin, t.TempDir(), "reader", "127.0.0.1", relay.Port(), "-S", "reader")
	if err != nil {
		t.Fatal(err)
	}
	seg := strings.TrimSuffix(filepath.Base(victim), ".wz")
	waitFor(t, time.Minute, "pg_receivewal to complete "+seg, func() (bool, error) {
		_, err := os.Stat(filepath.Join(recv.Dir, seg))
		return err == nil, nil
	})
	recv.Stop()
	n, err := pgcluster.CompareSegments(recv.Dir, filepath.Join(primary.DataDir, "pg_wal"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d segments read through the relay equal the primary's", n)
	resp, err := http.Get("http://" + relay.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "walrelay_store_corrupt_frames_total 1") {
		t.Errorf("corruption not counted")
	}
	if !relayLogContains(t, relay, "corrupt WAL in the store") {
		t.Error("corruption not logged")
	}
}
