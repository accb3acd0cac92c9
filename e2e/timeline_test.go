package e2e

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A promotion upstream flows through the relay: primary -> standby H
// (direct) and primary -> relay -> S1, S2. The primary stops, H is
// promoted, the relay is pointed at H; S1 and S2 follow onto timeline 2 and
// reach H's final LSN with matching checksums, and TIMELINE_HISTORY through
// the relay returns H's history file byte for byte.
func TestTimelineSwitchThroughRelay(t *testing.T) {
	requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	ctx := context.Background()
	h := newStandby(t, primary, "h", primary.ReplicationConnString())
	relay := startRelay(t, "r1", primary.ReplicationConnString())
	s1 := newStandby(t, primary, "s1", relay.Conninfo())
	s2 := newStandby(t, primary, "s2", relay.Conninfo())
	waitStreaming(t, relay, 2, 30*time.Second)
	if err := primary.Pgbench(ctx, 2, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, h, s1, s2)

	sctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := primary.Stop(sctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Promote(sctx); err != nil {
		t.Fatal(err)
	}
	relay.stop(t)
	relay.args = replaceArg(relay.args, "--upstream", h.ReplicationConnString())
	relay.Restart(t)
	if err := h.Pgbench(ctx, 2, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	assertConverged(t, h, s1, s2)
	waitFor(t, 30*time.Second, "standbys on timeline 2", func() (bool, error) {
		for _, sb := range []interface{ ConnString() string }{s1, s2} {
			conn, err := pgconn.Connect(ctx, sb.ConnString())
			if err != nil {
				return false, err
			}
			res, err := conn.Exec(ctx, "SELECT received_tli FROM pg_stat_wal_receiver").ReadAll()
			conn.Close(ctx)
			if err != nil || len(res[0].Rows) == 0 || string(res[0].Rows[0][0]) != "2" {
				return false, err
			}
		}
		return true, nil
	})
	want, err := os.ReadFile(filepath.Join(h.DataDir, "pg_wal", "00000002.history"))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := pgconn.Connect(ctx, relay.Conninfo()+" replication=true")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	res, err := conn.Exec(ctx, "TIMELINE_HISTORY 2").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if got := res[0].Rows[0][1]; !bytes.Equal(got, want) {
		t.Errorf("TIMELINE_HISTORY 2 through the relay = %q, H has %q", got, want)
	}
}
