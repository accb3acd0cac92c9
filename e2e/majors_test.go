package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/internal/pgcluster"
	"github.com/walrelay/walrelay/walstream"
)

// matrixMajors are the majors besides the Debian package's that every run
// tests (scripts/pg-majors.sh installs them).
var matrixMajors = []int{14, 16, 17, 18}

// TestCoreScenarioOnEveryMajor runs the core scenario against each other
// major's real server: a primary, two chained relays with a compressed
// link, a standby below each (made by a cold copy of the primary: the
// Debian client tools of 15 refuse newer servers), a write load; the
// standbys' tables equal the primary's, WAL read through the last relay is
// byte-identical to the primary's, and the relays report the primary's
// server_version. Without the binaries the test skips, or fails under
// WALRELAY_REQUIRE_PG_MAJORS=1 (.ci/run).
func TestCoreScenarioOnEveryMajor(t *testing.T) {
	requirePG(t)
	bins, _ := pgcluster.MajorBinDirs("")
	for _, major := range matrixMajors {
		t.Run(fmt.Sprintf("pg%d", major), func(t *testing.T) {
			bin, ok := bins[major]
			if !ok {
				if os.Getenv("WALRELAY_REQUIRE_PG_MAJORS") == "1" {
					t.Fatalf("WALRELAY_REQUIRE_PG_MAJORS=1: PostgreSQL %d server binaries not found (run scripts/pg-majors.sh)", major)
				}
				t.Skipf("PostgreSQL %d server binaries not found: scripts/pg-majors.sh installs them (WALRELAY_REQUIRE_PG_MAJORS=1 makes this a failure)", major)
			}
			if got, err := pgcluster.Major(bin); err != nil || got != major {
				t.Fatalf("binaries in %s are PostgreSQL %d (%v), want %d", bin, got, err, major)
			}
			coreScenario(t, bin)
		})
	}
}

func coreScenario(t *testing.T, bin string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	primary, err := pgcluster.InitPrimary(ctx, pgcluster.Options{BinDir: bin, BaseDir: clusterBase(t), Name: "primary"})
	if err != nil {
		t.Fatal(err)
	}
	startCluster(t, primary)
	if err := primary.Exec(ctx, "CREATE TABLE t(id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g"); err != nil {
		t.Fatal(err)
	}
	// Standbys by cold copy of the stopped primary.
	if err := primary.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	var sbs []*pgcluster.Cluster
	for _, name := range []string{"sb1", "sb2"} {
		sb, err := primary.Clone(ctx, pgcluster.Options{BaseDir: clusterBase(t), Name: name})
		if err != nil {
			t.Fatal(err)
		}
		sbs = append(sbs, sb)
	}
	if err := primary.Start(ctx); err != nil {
		t.Fatal(err)
	}
	r1 := startRelay(t, "r1", primary.ReplicationConnString())
	r2 := startRelay(t, "r2", r1.Conninfo())
	for i, r := range []*relayProc{r1, r2} {
		if err := sbs[i].SetStandby(r.Conninfo() + " application_name=" + sbs[i].Name); err != nil {
			t.Fatal(err)
		}
		startCluster(t, sbs[i])
	}
	waitFor(t, time.Minute, "r2 streaming over a compressed link", func() (bool, error) {
		up, _ := r2.Status(t)["upstream"].(map[string]any)
		return up["state"] == "streaming" && up["compression"] == "zstd", nil
	})
	start, err := primary.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The load: many small commits, a segment switch, a bulk one.
	for i := 0; i < 200; i++ {
		if err := primary.Exec(ctx, fmt.Sprintf("INSERT INTO t VALUES (%d, 'x'); UPDATE t SET v = v || 'y' WHERE id = %d", 1001+i, 1+i)); err != nil {
			t.Fatal(err)
		}
	}
	if err := primary.Exec(ctx, "SELECT pg_switch_wal(); INSERT INTO t SELECT g, repeat('z', 200) FROM generate_series(2000, 30000) g"); err != nil {
		t.Fatal(err)
	}
	end, err := primary.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range sbs {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := sb.WaitReplayed(wctx, end)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := primary.CompareTables(ctx, []string{"t"}, sbs...); err != nil {
		t.Fatal(err)
	}
	fromPrimary := readWALRange(t, primary.ReplicationConnString(), start, end)
	fromRelay := readWALRange(t, r2.Conninfo(), start, end)
	if !bytes.Equal(fromPrimary, fromRelay) {
		t.Fatalf("WAL %s-%s read through r2 differs from the primary's", pgcluster.FormatLSN(start), pgcluster.FormatLSN(end))
	}
	// A standby of another major must be refused by its own version check,
	// so the relays say they are what their upstream is.
	want := serverVersion(t, primary.ReplicationConnString())
	for _, r := range []*relayProc{r1, r2} {
		if got := serverVersion(t, r.Conninfo()); got != want {
			t.Errorf("relay %s reports server_version %q, its upstream %q", r.ID, got, want)
		}
	}
	negotiationMatches(t, fmt.Sprintf("127.0.0.1:%d", primary.Port), r2.Listen)
	// READ_REPLICATION_SLOT (PostgreSQL 15 on) is served from the relay's
	// own slots whatever the upstream's major.
	createRelaySlot(t, r2, "matrix_slot")
	rows := replicationQuery(t, r2.Conninfo(), "READ_REPLICATION_SLOT matrix_slot")
	if len(rows) != 1 || string(rows[0][0]) != "physical" || len(rows[0][1]) == 0 {
		t.Errorf("READ_REPLICATION_SLOT on the relay: %q", rows)
	}
	t.Logf("%s: standbys converged, %d bytes of WAL through two relays byte-identical, server_version %s",
		bin, len(fromPrimary), want)
}

// serverVersion is the server_version a replication connection announces.
func serverVersion(t *testing.T, conninfo string) string {
	conn, err := pgconn.Connect(context.Background(), conninfo+" replication=true")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	return conn.ParameterStatus("server_version")
}

// readWALRange streams WAL [start, end) on timeline 1 with a replication
// client of the project's own and returns it.
func readWALRange(t *testing.T, conninfo string, start, end uint64) []byte {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgconn.Connect(ctx, conninfo+" replication=true")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: fmt.Sprintf("START_REPLICATION %s TIMELINE 1", pgcluster.FormatLSN(start))})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	out := make([]byte, 0, end-start)
	var buf []byte
	for uint64(len(out)) < end-start {
		msg, err := conn.ReceiveMessage(ctx)
		if err != nil {
			t.Fatalf("reading WAL from %s at %s: %v", conninfo, pgcluster.FormatLSN(start+uint64(len(out))), err)
		}
		switch m := msg.(type) {
		case *pgproto3.ErrorResponse:
			t.Fatalf("START_REPLICATION on %s: %s", conninfo, m.Message)
		case *pgproto3.CopyData:
			switch m.Data[0] {
			case 'w':
				x, err := walstream.ParseXLogData(m.Data)
				if err != nil {
					t.Fatal(err)
				}
				if uint64(x.DataStart) != start+uint64(len(out)) {
					t.Fatalf("WAL from %s at %s, want %s", conninfo, x.DataStart, pgcluster.FormatLSN(start+uint64(len(out))))
				}
				out = append(out, x.Data[:min(uint64(len(x.Data)), end-start-uint64(len(out)))]...)
			case 'k':
				if k, _ := walstream.ParseKeepalive(m.Data); k.ReplyRequested {
					buf = walstream.AppendStandbyStatus(buf[:0], walstream.StandbyStatus{SendTime: walstream.PGTime(time.Now())})
					fe.Send(&pgproto3.CopyData{Data: buf})
					fe.Flush()
				}
			}
		}
	}
	return out
}

// After pg_upgrade the upstream is another major on another system
// identifier: a relay whose store holds the old cluster's WAL refuses it,
// naming both system identifiers and both versions, and keeps its own.
func TestRelayRefusesUpstreamOfAnotherMajor(t *testing.T) {
	requirePG(t)
	bins, _ := pgcluster.MajorBinDirs("")
	bin, ok := bins[17]
	if !ok {
		if os.Getenv("WALRELAY_REQUIRE_PG_MAJORS") == "1" {
			t.Fatal("WALRELAY_REQUIRE_PG_MAJORS=1: PostgreSQL 17 server binaries not found (run scripts/pg-majors.sh)")
		}
		t.Skip("PostgreSQL 17 server binaries not found: scripts/pg-majors.sh installs them (WALRELAY_REQUIRE_PG_MAJORS=1 makes this a failure)")
	}
	old := newPrimary(t, "old", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	upgraded, err := pgcluster.InitPrimary(ctx, pgcluster.Options{BinDir: bin, BaseDir: clusterBase(t), Name: "upgraded"})
	if err != nil {
		t.Fatal(err)
	}
	startCluster(t, upgraded)
	relay := startRelay(t, "r1", old.ReplicationConnString())
	waitFor(t, 30*time.Second, "relay streaming from the old primary", func() (bool, error) {
		up, _ := relay.Status(t)["upstream"].(map[string]any)
		return up["state"] == "streaming", nil
	})
	sysOld, _ := relay.Status(t)["system_id"].(string)
	relay.stop(t)
	relay.args = replaceArg(relay.args, "--upstream", upgraded.ReplicationConnString())
	relay.Restart(t)
	var up map[string]any
	waitFor(t, 30*time.Second, "relay refusing the upgraded primary", func() (bool, error) {
		up, _ = relay.Status(t)["upstream"].(map[string]any)
		return up["state"] == "refused", nil
	})
	var sysNew string
	conn, err := upgraded.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if err := conn.QueryRow(ctx, "SELECT system_identifier::text FROM pg_control_system()").Scan(&sysNew); err != nil {
		t.Fatal(err)
	}
	msg, _ := up["last_error"].(string)
	for _, want := range []string{sysOld, sysNew, "PostgreSQL 17.", "PostgreSQL 15."} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q does not name %s", msg, want)
		}
	}
	if v := serverVersion(t, relay.Conninfo()); walstream.MajorVersion(v) != 15 {
		t.Errorf("relay now announces server_version %q", v)
	}
}

// startupReply is what a server answers a startup packet with, as far as
// protocol negotiation goes.
type startupReply struct {
	Negotiated   bool
	NewestMinor  uint32
	Unrecognized []string
	KeyLen       int
	Error        string
}

// answerStartup sends a StartupMessage of protocol 3.minor with params to
// addr and reads the answer up to ReadyForQuery or an error.
func answerStartup(t *testing.T, addr string, minor uint32, params ...string) startupReply {
	t.Helper()
	b := binary.BigEndian.AppendUint32(make([]byte, 4), 3<<16|minor)
	for _, p := range params {
		b = append(append(b, p...), 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := nc.Write(b); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(nc, nc)
	var r startupReply
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("startup 3.%d to %s: %v", minor, addr, err)
		}
		switch m := msg.(type) {
		case *pgproto3.NegotiateProtocolVersion:
			r.Negotiated, r.NewestMinor, r.Unrecognized = true, m.NewestMinorProtocol, slices.Clone(m.UnrecognizedOptions)
		case *pgproto3.BackendKeyData:
			r.KeyLen = len(m.SecretKey)
		case *pgproto3.ErrorResponse:
			r.Error = m.Message
			return r
		case *pgproto3.ReadyForQuery:
			return r
		}
	}
}

// negotiationMatches checks that a relay answers protocol negotiation as
// the PostgreSQL server it relays does.
func negotiationMatches(t *testing.T, server, relay string) {
	t.Helper()
	user := []string{"user", "postgres", "replication", "true"}
	for _, c := range []struct {
		minor  uint32
		params []string
	}{
		{0, user},
		{2, user},
		{2, append(slices.Clone(user), "_pq_.walrelay_test", "1")},
		{9, user},
	} {
		want, got := answerStartup(t, server, c.minor, c.params...), answerStartup(t, relay, c.minor, c.params...)
		if !reflect.DeepEqual(want, got) {
			t.Errorf("startup 3.%d %v: the relay answers %+v, the server %+v", c.minor, c.params, got, want)
		}
	}
}

// replicationQuery runs a replication command and returns its rows.
func replicationQuery(t *testing.T, conninfo, cmd string) [][][]byte {
	t.Helper()
	conn, err := pgconn.Connect(context.Background(), conninfo+" replication=true")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	res, err := conn.Exec(context.Background(), cmd).ReadAll()
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	if len(res) != 1 {
		t.Fatalf("%s: %d results", cmd, len(res))
	}
	return res[0].Rows
}
