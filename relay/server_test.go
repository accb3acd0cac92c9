package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"go.uber.org/goleak"

	"github.com/walrelay/walrelay/internal/waltest"
	"github.com/walrelay/walrelay/walstream"
)

const (
	testSeg   = 1 << 20
	testSysID = 7300000000000000001
)

// fixture is a relay server over a real store fed with synthetic WAL.
type fixture struct {
	store *walstream.Store
	srv   *Server
	addr  string
	end   walstream.LSN
	up    *fakeProgress
}

type fakeProgress struct{ end walstream.LSN }

func (f *fakeProgress) ServerWALEnd() walstream.LSN { return f.end }

func newFixture(t testing.TB, start walstream.LSN) *fixture {
	t.Helper()
	return newFixtureWith(t, start, walstream.StoreOptions{TailBytes: 64 << 20})
}

func newFixtureWith(t testing.TB, start walstream.LSN, opts walstream.StoreOptions, configure ...func(*Config)) *fixture {
	t.Helper()
	return newFixtureOf(t, "15.18", start, opts, configure...)
}

// newFixtureOf is a relay whose upstream is serverVersion.
func newFixtureOf(t testing.TB, serverVersion string, start walstream.LSN, opts walstream.StoreOptions, configure ...func(*Config)) *fixture {
	t.Helper()
	dir := t.TempDir()
	store, err := walstream.OpenStore(filepath.Join(dir, "store"), opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := store.Bind(walstream.Identity{SystemID: testSysID, SegmentSize: testSeg}, serverVersion); err != nil {
		t.Fatal(err)
	}
	if err := store.StartAt(1, start); err != nil {
		t.Fatal(err)
	}
	f := &fixture{store: store, end: start, up: &fakeProgress{}}
	cfg := Config{
		NodeID:        "r1",
		Source:        store,
		Upstream:      f.up,
		SlotDir:       filepath.Join(dir, "slots"),
		SenderTimeout: 10 * time.Second,
		ShutdownGrace: time.Second,
	}
	for _, c := range configure {
		c(&cfg)
	}
	f.srv, err = NewServer(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.addr = ln.Addr().String()
	served := make(chan error, 1)
	go func() { served <- f.srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		f.srv.Shutdown(ctx)
		if err := <-served; !errors.Is(err, ErrServerClosed) {
			t.Errorf("Serve: %v", err)
		}
		store.Close()
	})
	return f
}

// appendWAL writes n more bytes of synthetic WAL and makes them durable.
func (f *fixture) appendWAL(t testing.TB, n int) {
	t.Helper()
	f.appendRaw(t, waltest.Generate(testSysID, testSeg, 1, uint64(f.end), n))
}

// appendRaw writes data as the next WAL and makes it durable.
func (f *fixture) appendRaw(t testing.TB, data []byte) {
	t.Helper()
	if err := f.store.Write(1, f.end, data); err != nil {
		t.Fatal(err)
	}
	if _, err := f.store.Sync(); err != nil {
		t.Fatal(err)
	}
	f.end += walstream.LSN(len(data))
}

func (f *fixture) connect(t testing.TB, params string) *pgconn.PgConn {
	t.Helper()
	host, port, _ := net.SplitHostPort(f.addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=postgres sslmode=disable replication=true application_name=test %s", host, port, params))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

func TestIdentifySystemAndShow(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	f.appendWAL(t, 5000)
	conn := f.connect(t, "")
	if v := conn.ParameterStatus("server_version"); v != "15.18" {
		t.Errorf("server_version = %q", v)
	}
	if v := conn.ParameterStatus("integer_datetimes"); v != "on" {
		t.Errorf("integer_datetimes = %q", v)
	}
	sys, err := pglogrepl.IdentifySystem(context.Background(), conn)
	if err != nil {
		t.Fatal(err)
	}
	if sys.SystemID != "7300000000000000001" || sys.Timeline != 1 || sys.XLogPos != pglogrepl.LSN(3*testSeg+5000) || sys.DBName != "" {
		t.Errorf("IDENTIFY_SYSTEM = %+v", sys)
	}
	res, err := conn.Exec(context.Background(), "IDENTIFY_SYSTEM").ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	fd := res[0].FieldDescriptions
	if len(fd) != 4 || fd[1].DataTypeOID != oidInt4 || res[0].Rows[0][3] != nil {
		t.Errorf("IDENTIFY_SYSTEM shape: %+v rows %q", fd, res[0].Rows)
	}
	for q, want := range map[string]string{"SHOW wal_segment_size": "1MB", "SHOW data_directory_mode": "0700"} {
		res, err := conn.Exec(context.Background(), q).ReadAll()
		if err != nil || string(res[0].Rows[0][0]) != want || string(res[0].CommandTag.String()) != "SHOW" {
			t.Errorf("%s = %v %v", q, res, err)
		}
	}
	_, err = conn.Exec(context.Background(), "SHOW work_mem").ReadAll()
	assertPgError(t, err, "42704", `unrecognized configuration parameter "work_mem"`)
	// The connection stays usable after errors.
	if _, err := pglogrepl.IdentifySystem(context.Background(), conn); err != nil {
		t.Errorf("after an error: %v", err)
	}
}

func assertPgError(t testing.TB, err error, code, msg string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("want PgError %s %q, got %v", code, msg, err)
	}
	if pe.Code != code || (msg != "" && pe.Message != msg) {
		t.Fatalf("got %s %q, want %s %q", pe.Code, pe.Message, code, msg)
	}
}

// streamClient reads a physical stream the way a walreceiver does.
type streamClient struct {
	nc  net.Conn
	fe  *pgproto3.Frontend
	buf []byte
}

func startStream(t testing.TB, conn *pgconn.PgConn, query string) *streamClient {
	t.Helper()
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: query})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := conn.ReceiveMessage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := msg.(*pgproto3.CopyBothResponse); !ok {
		t.Fatalf("START_REPLICATION: got %T %+v", msg, msg)
	}
	hc, err := conn.Hijack()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hc.Conn.Close() })
	return &streamClient{nc: hc.Conn, fe: hc.Frontend}
}

// receive collects WAL until it holds `until`, checking continuity.
func (c *streamClient) receive(t testing.TB, from, until walstream.LSN) []byte {
	t.Helper()
	pos := from
	var out []byte
	c.nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for pos < until {
		msg, err := c.fe.Receive()
		if err != nil {
			t.Fatalf("receive at %s: %v", pos, err)
		}
		cd, ok := msg.(*pgproto3.CopyData)
		if !ok {
			t.Fatalf("got %T %+v", msg, msg)
		}
		switch cd.Data[0] {
		case 'w':
			x, err := walstream.ParseXLogData(cd.Data)
			if err != nil {
				t.Fatal(err)
			}
			if x.DataStart != pos {
				t.Fatalf("XLogData at %s, want %s", x.DataStart, pos)
			}
			if len(x.Data) > walstream.MaxSendSize {
				t.Fatalf("XLogData of %d bytes", len(x.Data))
			}
			out = append(out, x.Data...)
			pos += walstream.LSN(len(x.Data))
		case 'k':
			if len(cd.Data) != 18 {
				t.Fatalf("keepalive of %d bytes", len(cd.Data))
			}
		}
	}
	return out
}

func (c *streamClient) reply(t testing.TB, write, flush walstream.LSN, replyRequested bool) {
	t.Helper()
	c.buf = walstream.AppendStandbyStatus(c.buf[:0], walstream.StandbyStatus{
		Write: write, Flush: flush, Apply: flush, SendTime: walstream.PGTime(time.Now()), ReplyRequested: replyRequested,
	})
	c.fe.Send(&pgproto3.CopyData{Data: c.buf})
	if err := c.fe.Flush(); err != nil {
		t.Fatal(err)
	}
}

func TestStreamDeliversExactBytes(t *testing.T) {
	f := newFixture(t, 2*testSeg)
	f.appendWAL(t, testSeg+300_000)
	conn := f.connect(t, "")
	c := startStream(t, conn, "START_REPLICATION 0/200000 TIMELINE 1")
	got := c.receive(t, 2*testSeg, f.end)
	// More WAL arrives while streaming and is pushed without polling.
	f.appendWAL(t, 777)
	got = append(got, c.receive(t, f.end-777, f.end)...)
	want := waltest.Generate(testSysID, testSeg, 1, 2*testSeg, int(f.end-2*testSeg))
	if !bytes.Equal(got, want) {
		t.Fatal("streamed WAL differs from the store's")
	}
	c.reply(t, f.end, f.end, false)
	waitFor(t, func() bool {
		ss := f.srv.Sessions()
		return len(ss) == 1 && ss[0].FlushLSN == f.end && ss[0].State == "streaming" && ss[0].ApplicationName == "test"
	})
}

func waitFor(t testing.TB, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not reached")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestFeedbackAggregation(t *testing.T) {
	f := newFixture(t, 3*testSeg)
	f.appendWAL(t, 100)
	f.srv.cfg.FeedbackFrom = ParseFeedbackPolicy("web1,web2")
	send := func(app string, xmin, epoch uint32) {
		c := startStream(t, f.connect(t, "application_name="+app), "START_REPLICATION 0/300000 TIMELINE 1")
		b := walstream.AppendHotStandbyFeedback(nil, walstream.HotStandbyFeedback{Xmin: xmin, XminEpoch: epoch})
		c.fe.Send(&pgproto3.CopyData{Data: b})
		c.fe.Flush()
	}
	if _, ok := f.srv.Feedback(); ok {
		t.Fatal("feedback without children")
	}
	send("web1", 900, 1)
	send("web2", 4000000000, 0) // older: epoch 0
	send("analytics", 5, 0)     // oldest, but not in the policy
	waitFor(t, func() bool {
		fb, ok := f.srv.Feedback()
		return ok && fb.Xmin == 4000000000 && fb.XminEpoch == 0
	})
	f.srv.cfg.FeedbackFrom = ParseFeedbackPolicy("none")
	if fb, ok := f.srv.Feedback(); ok {
		t.Errorf("policy none forwarded %+v", fb)
	}
	f.srv.cfg.FeedbackFrom = ParseFeedbackPolicy("all")
	waitFor(t, func() bool { fb, _ := f.srv.Feedback(); return fb.Xmin == 5 })
}
