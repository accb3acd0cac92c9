package relay

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/internal/waltest"
	"github.com/walrelay/walrelay/walstream"
)

// A client that stops reading fills its socket buffers and blocks only its
// own session: another client keeps receiving everything.
func TestStalledClientDoesNotSlowOthers(t *testing.T) {
	f := newFixture(t, 0)
	stalled := f.connect(t, "application_name=stalled")
	startStream(t, stalled, "START_REPLICATION 0/0 TIMELINE 1") // never read again
	healthy := startStream(t, f.connect(t, "application_name=healthy"), "START_REPLICATION 0/0 TIMELINE 1")

	// Far more than loopback socket buffers hold.
	const total = 24 << 20
	got := make(chan []byte, 1)
	go func() { got <- healthy.receiveQuiet(total) }()
	for f.end < total {
		f.appendWAL(t, 1<<20)
	}
	select {
	case b := <-got:
		if !bytes.Equal(b, waltest.Generate(testSysID, testSeg, 1, 0, total)) {
			t.Fatal("healthy client got different WAL")
		}
	case <-time.After(20 * time.Second):
		t.Fatal("healthy client did not receive all WAL while another client was stalled")
	}
	var stalledSent walstream.LSN
	for _, s := range f.srv.Sessions() {
		if s.ApplicationName == "stalled" {
			stalledSent = s.SentLSN
		}
	}
	if stalledSent >= total {
		t.Errorf("stalled client was sent everything (%s): the test did not stall it", stalledSent)
	}
	t.Logf("stalled client's session got as far as %s of %s", stalledSent, walstream.LSN(total))
}

// receiveQuiet is receive without test helpers, for use in goroutines.
func (c *streamClient) receiveQuiet(until walstream.LSN) []byte {
	var out []byte
	c.nc.SetReadDeadline(time.Now().Add(30 * time.Second))
	for walstream.LSN(len(out)) < until {
		msg, err := c.fe.Receive()
		if err != nil {
			return out
		}
		if cd, ok := msg.(*pgproto3.CopyData); ok && cd.Data[0] == 'w' {
			x, _ := walstream.ParseXLogData(cd.Data)
			out = append(out, x.Data...)
		}
	}
	return out
}

// On shutdown a streaming client gets the durable WAL, is asked to confirm
// it, and receives CommandComplete "COPY 0" once it has.
func TestShutdownEndsStreamCleanly(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	f.appendWAL(t, 4000)
	c := startStream(t, f.connect(t, ""), "START_REPLICATION 0/300000 TIMELINE 1")
	c.receive(t, 3*testSeg, f.end)
	done := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		done <- f.srv.Shutdown(ctx)
	}()
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	var tag string
	for tag == "" {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("before COPY 0: %v", err)
		}
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if msg.Data[0] == 'k' {
				k, _ := walstream.ParseKeepalive(msg.Data)
				if k.ReplyRequested {
					c.reply(t, f.end, f.end, false)
				}
			}
		case *pgproto3.CommandComplete:
			tag = string(msg.CommandTag)
		}
	}
	if tag != "COPY 0" {
		t.Errorf("end of stream tag %q, want COPY 0", tag)
	}
	if _, err := c.fe.Receive(); err == nil {
		t.Error("connection still open after COPY 0")
	}
	if err := <-done; err != nil {
		t.Errorf("Shutdown: %v", err)
	}
}
