package e2e

import (
	"context"
	"net"
	"testing"
	"time"
)

// A connection flood of slow-loris clients (TCP open, nothing sent) beyond
// --max-connections: they are cut off by the startup timeout and the
// connection limit, and the standby streaming through the relay is not
// disturbed (same session, converges under pgbench).
func TestConnectionFloodDoesNotDisturbStreams(t *testing.T) {
	requirePG(t)
	ctx := context.Background()
	primary := newPgbenchPrimary(t, 1)
	relay := startRelay(t, "r1", primary.ReplicationConnString(), "--max-connections", "100", "--startup-timeout", "2s", "--log-level", "warn")
	s := newStandby(t, primary, "s", relay.Conninfo())
	waitStreaming(t, relay, 1, 30*time.Second)
	pid := func() any {
		for _, d := range relay.Status(t)["downstreams"].([]any) {
			if m := d.(map[string]any); m["state"] == "streaming" {
				return m["pid"]
			}
		}
		return nil
	}
	before := pid()
	load := make(chan error, 1)
	go func() { load <- primary.Pgbench(ctx, 2, 8*time.Second) }()
	var conns []net.Conn
	for i := 0; i < 300; i++ {
		c, err := net.Dial("tcp", relay.Listen)
		if err != nil {
			t.Fatalf("dial %d: %v", i, err)
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// Every flood connection is closed by the relay within the startup
	// timeout (plus scheduling slack).
	deadline := time.Now().Add(10 * time.Second)
	closed := 0
	for _, c := range conns {
		c.SetReadDeadline(deadline)
		if _, err := c.Read(make([]byte, 1)); err != nil {
			if ne, ok := err.(net.Error); ok && ne.Timeout() {
				continue
			}
			closed++
		}
	}
	if closed != len(conns) {
		t.Errorf("%d of %d slow-loris connections were closed by the relay", closed, len(conns))
	}
	if err := <-load; err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, s)
	if after := pid(); after != before {
		t.Errorf("the standby's session changed during the flood: %v -> %v", before, after)
	}
	t.Logf("%d slow-loris connections cut off; the standby kept session %v and converged", closed, before)
}
