package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// A relay can sit under a PostgreSQL standby (native cascading upstream):
// primary -> standby H -> relay -> standby S.
func TestRelayUnderStandby(t *testing.T) {
	requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	ctx := context.Background()
	h := newStandby(t, primary, "h", primary.ReplicationConnString())
	relay := startRelay(t, "r1", h.ReplicationConnString())
	s := newStandby(t, primary, "s", relay.Conninfo())
	waitStreaming(t, relay, 1, 30*time.Second)
	if err := primary.Pgbench(ctx, 2, 4*time.Second); err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, h, s)
}

// A child that stops reading (its socket buffers fill) does not slow the
// standbys on the same relay.
func TestStalledChildDoesNotSlowStandbys(t *testing.T) {
	requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	ctx := context.Background()
	relay := startRelay(t, "r1", primary.ReplicationConnString())
	s1 := newStandby(t, primary, "s1", relay.Conninfo())
	s2 := newStandby(t, primary, "s2", relay.Conninfo())
	stalled, err := pgconn.Connect(ctx, relay.Conninfo()+" replication=true application_name=stalled")
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close(ctx)
	sys, err := stalled.Exec(ctx, "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	pos, _ := pgcluster.ParseLSN(string(sys[0].Rows[0][2]))
	fe := stalled.Frontend()
	fe.Send(&pgproto3.Query{String: fmt.Sprintf("START_REPLICATION %s TIMELINE 1", pgcluster.FormatLSN(pos/(16<<20)*(16<<20)))})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	// ... and never reads again.
	waitStreaming(t, relay, 3, 30*time.Second)
	if err := primary.Pgbench(ctx, 4, 8*time.Second); err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, s1, s2)
	ds, _ := relay.Status(t)["downstreams"].([]any)
	for _, d := range ds {
		if m, _ := d.(map[string]any); m["application_name"] == "stalled" {
			t.Logf("stalled child: sent %v, flushed %v; relay durable %s", m["sent_lsn"], m["flush_lsn"], pgcluster.FormatLSN(relayDurable(t, relay)))
		}
	}
}
