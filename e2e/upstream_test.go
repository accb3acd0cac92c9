package e2e

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The relay streams through slot walrelay_<id> on the primary, follows the
// primary through a restart, and exposes Prometheus metrics.
func TestRelaySlotReconnectAndMetrics(t *testing.T) {
	requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	ctx := context.Background()
	relay := startRelay(t, "r-1", primary.ReplicationConnString())
	standby := newStandby(t, primary, "standby1", relay.Conninfo())
	waitFor(t, 30*time.Second, "slot walrelay_r_1 active on the primary", func() (bool, error) {
		conn, err := primary.Connect(ctx)
		if err != nil {
			return false, err
		}
		defer conn.Close(ctx)
		var active bool
		err = conn.QueryRow(ctx, "SELECT active FROM pg_replication_slots WHERE slot_name = 'walrelay_r_1'").Scan(&active)
		return err == nil && active, nil
	})
	// Restart the primary: the relay reconnects and the standby converges.
	stopCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if err := primary.Stop(stopCtx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "relay noticing the lost upstream", func() (bool, error) {
		up, _ := relay.Status(t)["upstream"].(map[string]any)
		return up["state"] != "streaming", nil
	})
	if err := primary.Start(stopCtx); err != nil {
		t.Fatal(err)
	}
	if err := primary.Pgbench(ctx, 2, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, standby)
	up, _ := relay.Status(t)["upstream"].(map[string]any)
	if up["state"] != "streaming" {
		t.Errorf("upstream state %v after the primary came back", up["state"])
	}

	resp, err := http.Get("http://" + relay.HTTP + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, name := range []string{"walrelay_upstream_received_bytes_total", "walrelay_downstream_sent_bytes_total",
		"walrelay_downstream_connections 1", "walrelay_durable_lsn_bytes", "walrelay_upstream_reconnects_total"} {
		if !strings.Contains(string(body), name) {
			t.Errorf("/metrics lacks %s", name)
		}
	}
}

// A relay whose store holds one cluster's WAL refuses another cluster as
// upstream, naming both system identifiers, and keeps serving what it has.
func TestRelayRefusesOtherCluster(t *testing.T) {
	requirePG(t)
	a := newPrimary(t, "a", nil)
	b := newPrimary(t, "b", nil)
	relay := startRelay(t, "r1", a.ReplicationConnString())
	st := relay.Status(t)
	waitFor(t, 30*time.Second, "relay streaming from a", func() (bool, error) {
		st = relay.Status(t)
		up, _ := st["upstream"].(map[string]any)
		return up["state"] == "streaming", nil
	})
	sysA, _ := st["system_id"].(string)
	relay.stop(t)
	relay.args = replaceArg(relay.args, "--upstream", b.ReplicationConnString())
	relay.Restart(t)
	var up map[string]any
	waitFor(t, 30*time.Second, "relay refusing b", func() (bool, error) {
		up, _ = relay.Status(t)["upstream"].(map[string]any)
		return up["state"] == "refused", nil
	})
	msg, _ := up["last_error"].(string)
	conn, err := b.Connect(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var sysB string
	if err := conn.QueryRow(context.Background(), "SELECT system_identifier::text FROM pg_control_system()").Scan(&sysB); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(msg, sysA) || !strings.Contains(msg, sysB) {
		t.Errorf("error %q does not name both system ids %s and %s", msg, sysA, sysB)
	}
	if got, _ := relay.Status(t)["system_id"].(string); got != sysA {
		t.Errorf("relay now claims system id %s", got)
	}
}

func replaceArg(args []string, flag, value string) []string {
	out := append([]string(nil), args...)
	for i := range out {
		if out[i] == flag && i+1 < len(out) {
			out[i+1] = value
		}
	}
	return out
}
