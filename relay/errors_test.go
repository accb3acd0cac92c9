package relay

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// startReplicationError sends START_REPLICATION and expects CopyBothResponse
// followed by an ErrorResponse and ReadyForQuery, as a walsender does for
// checks made after entering COPY.
func startReplicationError(t *testing.T, conn *pgconn.PgConn, query, code, msg string) {
	t.Helper()
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: query})
	fe.Flush()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var gotCopy bool
	var pgErr error
	for {
		m, err := conn.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pgproto3.CopyBothResponse:
			gotCopy = true
		case *pgproto3.ErrorResponse:
			pgErr = pgconn.ErrorResponseToPgError(m)
		case *pgproto3.ReadyForQuery:
			if !gotCopy {
				t.Errorf("%s: error before CopyBothResponse", query)
			}
			assertPgError(t, pgErr, code, msg)
			return
		default:
			t.Fatalf("unexpected %T", m)
		}
	}
}

func TestStartReplicationErrors(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	f.appendWAL(t, 1000)
	f.up.end = f.end + 500
	conn := f.connect(t, "")
	startReplicationError(t, conn, "START_REPLICATION 0/100000 TIMELINE 1", "58P01",
		"requested WAL segment 000000010000000000000001 has already been removed")
	startReplicationError(t, conn, "START_REPLICATION 1/0 TIMELINE 1", "XX000",
		"requested starting point 1/0 is ahead of the WAL flush position of this server 0/3003E8")
	// Checks before COPY: plain errors.
	_, err := conn.Exec(context.Background(), "START_REPLICATION 0/300000 TIMELINE 7").ReadAll()
	assertPgError(t, err, "XX000", "requested timeline 7 is not in this server's history")
	_, err = conn.Exec(context.Background(), `START_REPLICATION SLOT "nope" 0/300000 TIMELINE 1`).ReadAll()
	assertPgError(t, err, "42704", `replication slot "nope" does not exist`)
	_, err = conn.Exec(context.Background(), "TIMELINE_HISTORY 2").ReadAll()
	assertPgError(t, err, "58P01", `could not open file "pg_wal/00000002.history": No such file or directory`)
	_, err = conn.Exec(context.Background(), "BASE_BACKUP").ReadAll()
	assertPgError(t, err, "0A000", "")
	_, err = conn.Exec(context.Background(), "SELECT 1").ReadAll()
	assertPgError(t, err, "0A000", "cannot execute SQL commands in WAL sender for physical replication")
	// Still usable.
	if _, err := conn.Exec(context.Background(), "IDENTIFY_SYSTEM").ReadAll(); err != nil {
		t.Fatal(err)
	}
}

// A client a little ahead of the relay (but not of its upstream) waits and
// gets the WAL when it arrives.
func TestStartReplicationAheadWaits(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	f.appendWAL(t, 1000)
	f.up.end = 4 * testSeg
	conn := f.connect(t, "")
	c := startStream(t, conn, "START_REPLICATION 0/300800 TIMELINE 1")
	time.Sleep(50 * time.Millisecond)
	f.appendWAL(t, 5000)
	got := c.receive(t, 3*testSeg+0x800, f.end)
	if len(got) != int(f.end-(3*testSeg+0x800)) {
		t.Fatalf("got %d bytes", len(got))
	}
}

func TestSlots(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	f.appendWAL(t, 1000)
	conn := f.connect(t, "")
	ctx := context.Background()
	res, err := conn.Exec(ctx, `CREATE_REPLICATION_SLOT "s1" PHYSICAL RESERVE_WAL`).ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != "s1" || string(res[0].Rows[0][1]) != "0/0" || res[0].Rows[0][2] != nil {
		t.Fatalf("CREATE_REPLICATION_SLOT: %v %v", res, err)
	}
	_, err = conn.Exec(ctx, `CREATE_REPLICATION_SLOT "s1" PHYSICAL`).ReadAll()
	assertPgError(t, err, "42710", `replication slot "s1" already exists`)
	_, err = conn.Exec(ctx, `CREATE_REPLICATION_SLOT "Bad-Name" PHYSICAL`).ReadAll()
	assertPgError(t, err, "42602", "")
	res, err = conn.Exec(ctx, `READ_REPLICATION_SLOT s1`).ReadAll()
	if err != nil || string(res[0].Rows[0][0]) != "physical" || string(res[0].Rows[0][1]) != "0/300000" || string(res[0].Rows[0][2]) != "1" {
		t.Fatalf("READ_REPLICATION_SLOT: %q %v", res[0].Rows, err)
	}
	res, err = conn.Exec(ctx, `READ_REPLICATION_SLOT nope`).ReadAll()
	if err != nil || len(res[0].Rows) != 1 || res[0].Rows[0][0] != nil || res[0].Rows[0][1] != nil {
		t.Fatalf("READ_REPLICATION_SLOT unknown: %q %v", res[0].Rows, err)
	}
	// Streaming from the slot moves its restart_lsn with the client's flush.
	conn2 := f.connect(t, "")
	c := startStream(t, conn2, `START_REPLICATION SLOT "s1" PHYSICAL 0/300000 TIMELINE 1`)
	c.receive(t, 3*testSeg, f.end)
	_, err = conn.Exec(ctx, `START_REPLICATION SLOT "s1" PHYSICAL 0/300000 TIMELINE 1`).ReadAll()
	assertPgError(t, err, "55006", "")
	_, err = conn.Exec(ctx, `DROP_REPLICATION_SLOT "s1"`).ReadAll()
	assertPgError(t, err, "55006", "")
	c.reply(t, f.end, f.end, false)
	waitFor(t, func() bool { s, _ := f.srv.slots.get("s1"); return s.RestartLSN == f.end })
	if oldest, ok := f.srv.OldestNeeded(); !ok || oldest > f.end {
		t.Errorf("OldestNeeded = %s %v", oldest, ok)
	}
	c.nc.Close()
	waitFor(t, func() bool { s, _ := f.srv.slots.get("s1"); return !s.Active })
	if _, err := conn.Exec(ctx, `DROP_REPLICATION_SLOT "s1"`).ReadAll(); err != nil {
		t.Fatal(err)
	}
	_, err = conn.Exec(ctx, `DROP_REPLICATION_SLOT "s1"`).ReadAll()
	assertPgError(t, err, "42704", `replication slot "s1" does not exist`)
	// Temporary slots disappear with their session.
	conn3 := f.connect(t, "")
	if _, err := conn3.Exec(ctx, `CREATE_REPLICATION_SLOT "t1" TEMPORARY PHYSICAL ( RESERVE_WAL)`).ReadAll(); err != nil {
		t.Fatal(err)
	}
	conn3.Close(ctx)
	waitFor(t, func() bool { _, ok := f.srv.slots.get("t1"); return !ok })
}

func TestStartupRejections(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	host, port, _ := net.SplitHostPort(f.addr)
	ctx := context.Background()
	for _, tt := range []struct{ params, code string }{
		{"", "0A000"},
		{"replication=database", "0A000"},
		{"replication=maybe", "22023"},
	} {
		_, err := pgconn.Connect(ctx, "host="+host+" port="+port+" user=postgres sslmode=disable dbname=postgres "+tt.params)
		assertPgError(t, err, tt.code, "")
	}
	// SSL is declined and the client falls back to plain text.
	conn, err := pgconn.Connect(ctx, "host="+host+" port="+port+" user=postgres sslmode=prefer replication=true")
	if err != nil {
		t.Fatalf("sslmode=prefer: %v", err)
	}
	conn.Close(ctx)
	// Garbage instead of a startup packet: the connection is closed, the
	// server keeps serving.
	nc, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, _ := nc.Read(buf)
	nc.Close()
	if n > 0 && buf[0] != 'E' {
		t.Errorf("garbage got %q", buf[:n])
	}
	f.connect(t, "")
}

func TestExtendedProtocolRejected(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	conn := f.connect(t, "")
	rr := conn.ExecParams(context.Background(), "IDENTIFY_SYSTEM", nil, nil, nil, nil).Read()
	assertPgError(t, rr.Err, "08P01", "extended query protocol not supported in a replication connection")
	if _, err := conn.Exec(context.Background(), "IDENTIFY_SYSTEM").ReadAll(); err != nil {
		t.Fatal(err)
	}
}

// A client that sends CopyDone gets the walsender's end-of-stream sequence
// and can issue commands again.
func TestClientCopyDone(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	f.appendWAL(t, 1000)
	conn := f.connect(t, "")
	c := startStream(t, conn, "START_REPLICATION 0/300000 TIMELINE 1")
	c.receive(t, 3*testSeg, f.end)
	c.fe.Send(&pgproto3.CopyDone{})
	c.fe.Flush()
	var tags []string
	for {
		m, err := c.fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if cc, ok := m.(*pgproto3.CommandComplete); ok {
			tags = append(tags, string(cc.CommandTag))
		}
		if _, ok := m.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if len(tags) != 2 || tags[0] != "START_STREAMING" || tags[1] != "START_REPLICATION" {
		t.Errorf("tags %v", tags)
	}
	c.fe.Send(&pgproto3.Query{String: "IDENTIFY_SYSTEM"})
	c.fe.Flush()
	m, err := c.fe.Receive()
	if _, ok := m.(*pgproto3.RowDescription); !ok || err != nil {
		t.Fatalf("after CopyDone: %T %v", m, err)
	}
}
