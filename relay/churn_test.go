package relay

import (
	"context"
	"fmt"
	"net"
	"os"
	"runtime"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/walstream"
)

func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	return len(entries)
}

// 1,000 clients connect and leave (half of them after starting to stream,
// some by dropping the socket mid-stream): the relay's goroutines and file
// descriptors return to where they were.
func TestConnectDisconnectCyclesLeaveNothing(t *testing.T) {
	f := newFixtureWith(t, 3*testSeg, walstream.StoreOptions{TailBytes: 1 << 20})
	f.appendWAL(t, 256<<10)
	host, port, _ := net.SplitHostPort(f.addr)
	ctx := context.Background()
	// Warm up pools (zstd, buffers) so they do not count as growth.
	for i := 0; i < 5; i++ {
		c := f.connect(t, "")
		c.Close(ctx)
	}
	time.Sleep(200 * time.Millisecond)
	baseG, baseFD := runtime.NumGoroutine(), openFDs(t)
	for i := 0; i < 1000; i++ {
		c, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=postgres sslmode=disable replication=true application_name=c%d", host, port, i))
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if i%2 == 0 {
			fe := c.Frontend()
			fe.Send(&pgproto3.Query{String: fmt.Sprintf("START_REPLICATION %s TIMELINE 1", walstream.LSN(3*testSeg))})
			if err := fe.Flush(); err != nil {
				t.Fatal(err)
			}
			rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if _, err := c.ReceiveMessage(rctx); err != nil { // CopyBothResponse
				t.Fatalf("cycle %d: %v", i, err)
			}
			cancel()
		}
		if i%4 == 0 {
			c.Conn().Close() // gone without a goodbye
		} else {
			c.Close(ctx)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		g, fd := runtime.NumGoroutine(), openFDs(t)
		if g <= baseG && fd <= baseFD && len(f.srv.Sessions()) == 0 {
			t.Logf("after 1000 cycles: goroutines %d (baseline %d), descriptors %d (baseline %d)", g, baseG, fd, baseFD)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 1000 cycles: goroutines %d (baseline %d), descriptors %d (baseline %d), %d sessions", g, baseG, fd, baseFD, len(f.srv.Sessions()))
		}
		time.Sleep(100 * time.Millisecond)
	}
}
