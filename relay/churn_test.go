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

// A child far behind the tip is sent no faster than --max-catchup-rate;
// once within reach of the tip it is no longer limited. The same catch-up
// without a limit is the yardstick.
func TestCatchupRateLimit(t *testing.T) {
	const rateBytes = 4 << 20
	catchUp := func(limit int64) time.Duration {
		f := newFixtureWith(t, 3*testSeg, walstream.StoreOptions{TailBytes: 1 << 20}, func(c *Config) {
			c.MaxCatchupRate = limit
		})
		f.appendWAL(t, 10<<20)
		c := startStream(t, f.connect(t, ""), fmt.Sprintf("START_REPLICATION %s TIMELINE 1", walstream.LSN(3*testSeg)))
		started := time.Now()
		c.drain(t, f.end)
		return time.Since(started)
	}
	free := catchUp(0)
	limited := catchUp(rateBytes)
	// 10 MB of which about 6 MB is farther than catchupLag from the tip:
	// 1.5 s at 4 MB/s, less a burst and a batch at either end.
	ideal := time.Duration(float64((10<<20)-catchupLag) / rateBytes * float64(time.Second))
	if limited < ideal/2 || limited < 5*free {
		t.Errorf("catch-up took %s with a limit of 4 MB/s and %s without: the limit does not hold (ideal %s)", limited, free, ideal)
	}
	t.Logf("10 MB caught up in %s at 4 MB/s, %s without a limit", limited.Round(time.Millisecond), free.Round(time.Millisecond))
}
