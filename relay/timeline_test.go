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

// A client streaming timeline 1 when the relay switches to timeline 2 gets
// WAL up to the switch point, then the walsender's end-of-timeline sequence,
// and can continue on timeline 2.
func TestTimelineSwitchWhileStreaming(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	f.appendWAL(t, testSeg+0x5000) // into segment 4
	conn := f.connect(t, "")
	c := startStream(t, conn, "START_REPLICATION 0/300000 TIMELINE 1")
	c.receive(t, 3*testSeg, f.end)

	switchPoint := walstream.LSN(4*testSeg + 0x3000) // before the relay's end: held WAL past it is not served
	history := []byte("1\t0/403000\tno recovery target specified\n")
	if err := f.store.WriteHistory(2, history); err != nil {
		t.Fatal(err)
	}
	if err := f.store.SwitchTimeline(2, switchPoint); err != nil {
		t.Fatal(err)
	}
	// Timeline 2's copy of the switch segment, then more WAL on it.
	tl2 := waltest.Generate(testSysID, testSeg, 2, 4*testSeg, 9000)
	if err := f.store.Write(2, 4*testSeg, tl2); err != nil {
		t.Fatal(err)
	}
	f.store.Sync()

	// The client already has everything up to 4*testSeg+0x5000 > switch
	// point: it gets no more WAL on timeline 1, only the end.
	c.nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if cd, ok := msg.(*pgproto3.CopyData); ok && cd.Data[0] == 'w' {
			x, _ := walstream.ParseXLogData(cd.Data)
			if x.DataStart+walstream.LSN(len(x.Data)) > switchPoint {
				t.Fatalf("got timeline-1 WAL past the switch point: %s+%d", x.DataStart, len(x.Data))
			}
		}
		if _, ok := msg.(*pgproto3.CopyDone); ok {
			break
		}
	}
	c.fe.Send(&pgproto3.CopyDone{})
	c.fe.Flush()
	next, start, tags := readTimelineEnd(t, c.fe)
	if next != "2" || start != "0/403000" || tags != "START_STREAMING,START_REPLICATION" {
		t.Fatalf("end of timeline: next %q start %q tags %q", next, start, tags)
	}
	// Back in command mode on the same connection.
	c.fe.Send(&pgproto3.Query{String: "TIMELINE_HISTORY 2"})
	c.fe.Flush()
	var content []byte
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if dr, ok := msg.(*pgproto3.DataRow); ok {
			content = append([]byte(nil), dr.Values[1]...)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if !bytes.Equal(content, history) {
		t.Errorf("TIMELINE_HISTORY 2 = %q", content)
	}
	c2 := startStream(t, f.connect(t, ""), "START_REPLICATION 0/400000 TIMELINE 2")
	if got := c2.receive(t, 4*testSeg, 4*testSeg+9000); !bytes.Equal(got, tl2) {
		t.Error("timeline 2 WAL differs")
	}
}

func readTimelineEnd(t *testing.T, fe *pgproto3.Frontend) (next, start, tags string) {
	t.Helper()
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		switch msg := msg.(type) {
		case *pgproto3.DataRow:
			next, start = string(msg.Values[0]), string(msg.Values[1])
		case *pgproto3.CommandComplete:
			if tags != "" {
				tags += ","
			}
			tags += string(msg.CommandTag)
		case *pgproto3.ReadyForQuery:
			return
		case *pgproto3.ErrorResponse:
			t.Fatalf("error: %s", msg.Message)
		}
	}
}

func TestStartReplicationOnHistoricTimeline(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	f.appendWAL(t, testSeg+0x5000)
	f.store.WriteHistory(2, []byte("1\t0/403000\tno recovery target specified\n"))
	f.store.SwitchTimeline(2, 4*testSeg+0x3000)
	f.store.Write(2, 4*testSeg, waltest.Generate(testSysID, testSeg, 2, 4*testSeg, 4000))
	f.store.Sync()
	conn := f.connect(t, "")
	ctx := context.Background()

	// At the switch point: no COPY, just the result.
	conn.Frontend().Send(&pgproto3.Query{String: "START_REPLICATION 0/403000 TIMELINE 1"})
	conn.Frontend().Flush()
	hc, err := conn.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	next, start, tags := readTimelineEnd(t, hc.Frontend)
	if next != "2" || start != "0/403000" || tags != "START_STREAMING,START_REPLICATION" {
		t.Errorf("at switch point: %q %q %q", next, start, tags)
	}
	hc.Conn.Close()

	conn = f.connect(t, "")
	_, err = conn.Exec(ctx, "START_REPLICATION 0/404000 TIMELINE 1").ReadAll()
	assertPgError(t, err, "XX000", "requested starting point 0/404000 on timeline 1 is not in this server's history")
	_, err = conn.Exec(ctx, "START_REPLICATION 0/300000 TIMELINE 3").ReadAll()
	assertPgError(t, err, "XX000", "requested timeline 3 is not in this server's history")

	// Before the switch point: timeline-1 WAL up to it, then the end.
	c := startStream(t, conn, "START_REPLICATION 0/400000 TIMELINE 1")
	got := c.receive(t, 4*testSeg, 4*testSeg+0x3000)
	if want := waltest.Generate(testSysID, testSeg, 1, 4*testSeg, 0x3000); !bytes.Equal(got, want) {
		t.Error("historic WAL differs")
	}
	for {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := msg.(*pgproto3.CopyDone); ok {
			break
		}
	}
	c.fe.Send(&pgproto3.CopyDone{})
	c.fe.Flush()
	if next, start, _ := readTimelineEnd(t, c.fe); next != "2" || start != "0/403000" {
		t.Errorf("after historic stream: %q %q", next, start)
	}
}
