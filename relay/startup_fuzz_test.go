package relay

import (
	"context"
	"encoding/binary"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/walrelay/walrelay/walstream"
)

// Whatever bytes a client sends first (startup packet, SSL/GSS requests,
// cancel requests, garbage), the relay answers within its startup timeout
// or closes, and keeps serving others.
func FuzzStartupPacket(f *testing.F) {
	startup := func(params ...string) []byte {
		b := binary.BigEndian.AppendUint32(make([]byte, 4), 196608)
		for _, p := range params {
			b = append(append(b, p...), 0)
		}
		b = append(b, 0)
		binary.BigEndian.PutUint32(b, uint32(len(b)))
		return b
	}
	f.Add(startup("user", "postgres", "replication", "true"))
	f.Add(startup("user", "postgres", "replication", "database"))
	f.Add([]byte{0, 0, 0, 8, 4, 210, 22, 47})                                  // SSLRequest
	f.Add(append([]byte{0, 0, 0, 8, 4, 210, 22, 47}, startup("user", "x")...)) // SSL then startup
	f.Add([]byte{0, 0, 0, 16, 4, 210, 22, 46, 0, 0, 0, 1, 0, 0, 0, 2})         // CancelRequest
	f.Add([]byte{0xff, 0xff, 0xff, 0xff})
	fx := newFixtureWith(f, 3*testSeg, walstream.StoreOptions{TailBytes: 1 << 20}, func(c *Config) {
		c.StartupTimeout = 500 * time.Millisecond
	})
	host, port, _ := net.SplitHostPort(fx.addr)
	f.Fuzz(func(t *testing.T, b []byte) {
		nc, err := net.Dial("tcp", fx.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		nc.SetDeadline(time.Now().Add(3 * time.Second))
		nc.Write(b)
		// The relay must answer (an error, 'N'/'S', or the start of a
		// session) or close; silence past the startup timeout is the bug.
		if _, err := nc.Read(make([]byte, 1)); err != nil {
			var ne net.Error
			if asNetError(err, &ne) && ne.Timeout() {
				t.Fatalf("the relay neither answered nor closed within 3 s of %x", b)
			}
		}
		conn, err := pgconn.Connect(context.Background(), "host="+host+" port="+port+" user=postgres sslmode=disable replication=true")
		if err != nil {
			t.Fatalf("a normal client after %x: %v", b, err)
		}
		conn.Close(context.Background())
	})
}

func asNetError(err error, target *net.Error) bool {
	ne, ok := err.(net.Error)
	if ok {
		*target = ne
	}
	return ok
}
