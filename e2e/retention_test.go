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

// Retention bounds hold: a relay-local slot whose client never comes back
// pins WAL only up to --max-retained-size; then it is invalidated, loudly,
// and the store stays within the cap.
func TestRetentionCapInvalidatesSlot(t *testing.T) {
	requirePG(t)
	primary := newPrimary(t, "primary", map[string]string{"max_wal_size": "1GB"})
	ctx := context.Background()
	relay := startRelay(t, "r1", primary.ReplicationConnString(), "--retain", "0", "--max-retained-size", "48MB")
	createRelaySlot(t, relay, "lagger")
	if err := primary.Exec(ctx, "CREATE TABLE filler AS SELECT g, repeat(md5(g::text), 8) AS pad FROM generate_series(1, 400000) g"); err != nil {
		t.Fatal(err)
	}
	target, _ := primary.CurrentLSN(ctx)
	waitRelayDurable(t, relay, target, time.Minute)
	waitFor(t, 30*time.Second, "slot lagger invalidated", func() (bool, error) {
		slots, _ := relay.Status(t)["slots"].([]any)
		for _, s := range slots {
			if m, ok := s.(map[string]any); ok && m["name"] == "lagger" {
				return m["invalidated"] == true, nil
			}
		}
		return false, fmt.Errorf("slot lagger missing")
	})
	// The next retention pass removes what the slot held.
	var held int64
	waitFor(t, 30*time.Second, "store within the cap", func() (bool, error) {
		held = 0
		entries, err := os.ReadDir(filepath.Join(relay.DataDir, "wal"))
		if err != nil {
			return false, err
		}
		for _, e := range entries {
			if info, err := e.Info(); err == nil {
				held += info.Size()
			}
		}
		return held <= 48<<20+16<<20, nil
	})
	t.Logf("generated %s of WAL; the relay holds %d MB", pgcluster.FormatLSN(target), held>>20)
	if !relayLogContains(t, relay, "invalidating replication slot") {
		t.Error("invalidation was not logged")
	}
}

// relayLogContains reports whether the relay's log contains s.
func relayLogContains(t *testing.T, r *relayProc, s string) bool {
	return relayLogCount(t, r, s) > 0
}

// relayLogCount counts the occurrences of s in the relay's log.
func relayLogCount(t *testing.T, r *relayProc, s string) int {
	b, err := os.ReadFile(r.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), s)
}
