package e2e

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path"
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
// major's real server: a primary, a manager, two chained relays with a
// compressed link, r1 the primary's synchronous standby, standbys below each
// (made by a cold copy of the primary: the Debian client tools of 15 refuse
// newer servers), a write load, then a primary failover through the manager. Before the failover the standbys'
// tables equal the primary's, WAL read through the last relay is
// byte-identical to the primary's, the relays report the primary's
// server_version and answer every command whose answer differs between
// majors as the server does; after it, every standby follows the new
// timeline with every acknowledged commit, and WAL of the new timeline read
// through the last relay is byte-identical to the new primary's. Without the
// binaries the test skips, or fails under WALRELAY_REQUIRE_PG_MAJORS=1
// (.ci/run).
func TestCoreScenarioOnEveryMajor(t *testing.T) {
	requirePG(t)
	bins, _ := pgcluster.MajorBinDirs("")
	for _, major := range matrixMajors {
		t.Run(fmt.Sprintf("pg%d", major), func(t *testing.T) {
			// Each waits on the manager's failure detection more than it
			// uses the CPU: two run at once (go test -parallel).
			t.Parallel()
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
			coreScenario(t, bin, major)
		})
	}
}

func coreScenario(t *testing.T, bin string, major int) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	conf := map[string]string{}
	if major >= 17 {
		// A logical failover slot to alter through the relays, and WAL
		// summaries for an incremental backup through them.
		conf = map[string]string{"wal_level": "logical", "summarize_wal": "on"}
	}
	primary, err := pgcluster.InitPrimary(ctx, pgcluster.Options{BinDir: bin, BaseDir: clusterBase(t), Name: "pg", Conf: conf})
	if err != nil {
		t.Fatal(err)
	}
	startCluster(t, primary)
	if err := primary.Exec(ctx, "CREATE TABLE t(id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 1000) g; CREATE TABLE acked(id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	// Standbys by cold copy of the stopped primary: c1 may be promoted.
	if err := primary.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	sbs := map[string]*pgcluster.Cluster{}
	for _, name := range []string{"c1", "s1", "s2"} {
		sb, err := primary.Clone(ctx, pgcluster.Options{BaseDir: clusterBase(t), Name: name, Conf: map[string]string{"wal_retrieve_retry_interval": "1s"}})
		if err != nil {
			t.Fatal(err)
		}
		if err := sb.SetStandby(primary.ReplicationConnString() + " application_name=" + name); err != nil {
			t.Fatal(err)
		}
		sbs[name] = sb
	}
	startCluster(t, primary)
	for _, sb := range sbs {
		startCluster(t, sb)
	}

	// The manager places everything: r2 under r1, s1 under r1, s2 under r2.
	mt := &managedTree{primary: primary, mgr: startManagerProc(t, "m1", ""), relays: map[string]*relayProc{},
		standbys: sbs, nodes: map[string]*pgcluster.Cluster{"pg": primary}}
	waitFor(t, 20*time.Second, "manager leader", func() (bool, error) {
		_, err := walrelayCLI("tree", "--manager", mt.mgr.url)
		return err == nil, nil
	})
	cliT(t, "primary", "set", "pg", "--conninfo", primary.ConnString(), "--manager", mt.mgr.url)
	for _, id := range []string{"r1", "r2"} {
		mt.relays[id] = startRelay(t, id, "", "--manager", mt.mgr.url)
	}
	r1, r2 := mt.relays["r1"], mt.relays["r2"]
	cliT(t, "move", "r2", "--to", "r1", "--manager", mt.mgr.url)
	for name, sb := range sbs {
		mt.nodes[name] = sb
		args := []string{"standby", "add", name, "--conninfo", sb.ConnString(), "--manager", mt.mgr.url}
		if name == "c1" {
			args = append(args, "--promotable")
		}
		cliT(t, args...)
	}
	cliT(t, "move", "s1", "--to", "r1", "--manager", mt.mgr.url)
	cliT(t, "move", "s2", "--to", "r2", "--manager", mt.mgr.url)
	waitFor(t, 90*time.Second, "r2 streaming from r1 over a compressed link, standbys from their relays", func() (bool, error) {
		up, _ := r2.Status(t)["upstream"].(map[string]any)
		if up["state"] != "streaming" || up["compression"] != "zstd" {
			return false, nil
		}
		tr, err := treeJSON(mt.mgr.url)
		if err != nil || tr.Tree.Nodes["r2"].Parent != "r1" {
			return false, nil
		}
		for name, sb := range sbs {
			r := mt.relays[tr.Tree.Nodes[name].Parent]
			port, streaming, err := receiverOf(ctx, sb)
			if r == nil || err != nil || !streaming || port != r.Port() {
				return false, nil
			}
		}
		return true, nil
	})
	// No acknowledged commit may be lost in the failover: r1 is the
	// primary's synchronous standby (set once it streams, or it would hold
	// every commit before).
	for _, q := range []string{"ALTER SYSTEM SET synchronous_standby_names = 'r1'", "SELECT pg_reload_conf()"} {
		if err := primary.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
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
	standbys := []*pgcluster.Cluster{sbs["c1"], sbs["s1"], sbs["s2"]}
	for _, sb := range standbys {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		err := sb.WaitReplayed(wctx, end)
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := primary.CompareTables(ctx, []string{"t"}, standbys...); err != nil {
		t.Fatal(err)
	}
	fromPrimary := readWALRange(t, primary.ReplicationConnString(), 1, start, end)
	fromRelay := readWALRange(t, r2.Conninfo(), 1, start, end)
	if !bytes.Equal(fromPrimary, fromRelay) {
		t.Fatalf("WAL %s-%s read through r2 differs from the primary's", pgcluster.FormatLSN(start), pgcluster.FormatLSN(end))
	}
	// A standby of another major must be refused by its own version check,
	// so the relays say they are what their upstream is.
	version := serverVersion(t, primary.ReplicationConnString())
	for _, r := range []*relayProc{r1, r2} {
		if got := serverVersion(t, r.Conninfo()); got != version {
			t.Errorf("relay %s reports server_version %q, its upstream %q", r.ID, got, version)
		}
	}
	negotiationMatches(t, fmt.Sprintf("127.0.0.1:%d", primary.Port), r2.Listen)
	commandAnswersMatch(t, primary.ReplicationConnString(), r2.Conninfo())
	// READ_REPLICATION_SLOT (PostgreSQL 15 on) is served from the relay's
	// own slots whatever the upstream's major.
	createRelaySlot(t, r2, "matrix_slot")
	rows := replicationQuery(t, r2.Conninfo(), "READ_REPLICATION_SLOT matrix_slot")
	if len(rows) != 1 || string(rows[0][0]) != "physical" || len(rows[0][1]) == 0 {
		t.Errorf("READ_REPLICATION_SLOT on the relay: %q", rows)
	}
	if major >= 17 {
		alterFailoverSlotThroughRelays(t, primary, r2)
		incrementalBackupThroughRelays(t, primary, r2)
	}

	// The primary fails under a write load; the manager promotes c1 and
	// every standby follows it through the relays.
	w := startAckWriter(func() *pgcluster.Cluster { return mt.primary })
	waitFor(t, 30*time.Second, "commits acknowledged with r1 synchronous", func() (bool, error) {
		return w.acked.Load() >= 20, nil
	})
	if err := primary.Kill(); err != nil {
		t.Fatal(err)
	}
	acked := w.finish()
	if acked == 0 {
		t.Fatal("no commit was acknowledged before the primary was killed")
	}
	newName, tli := mt.waitNewPrimary(t, "pg", 60*time.Second)
	if newName != "c1" || tli != 2 {
		t.Fatalf("manager promoted %s on timeline %d, want c1 on 2", newName, tli)
	}
	np := sbs["c1"]
	assertAcked(t, np, acked)
	switchLSN, err := np.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := np.Exec(ctx, "INSERT INTO t SELECT g, 'after failover' FROM generate_series(40000, 41000) g"); err != nil {
		t.Fatal(err)
	}
	final, err := np.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, sb := range []*pgcluster.Cluster{sbs["s1"], sbs["s2"]} {
		waitFor(t, 90*time.Second, sb.Name+" on timeline 2 at the new primary's end", func() (bool, error) {
			conn, err := sb.Connect(ctx)
			if err != nil {
				return false, nil
			}
			defer conn.Close(ctx)
			var tli int
			var replayed bool
			err = conn.QueryRow(ctx, "SELECT COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), 0), pg_last_wal_replay_lsn() >= $1::pg_lsn",
				pgcluster.FormatLSN(final)).Scan(&tli, &replayed)
			return err == nil && tli == 2 && replayed, nil
		})
		assertAcked(t, sb, acked)
	}
	if err := np.CompareTables(ctx, []string{"t", "acked"}, sbs["s1"], sbs["s2"]); err != nil {
		t.Fatal(err)
	}
	fromNew := readWALRange(t, np.ReplicationConnString(), 2, switchLSN, final)
	fromRelay = readWALRange(t, r2.Conninfo(), 2, switchLSN, final)
	if !bytes.Equal(fromNew, fromRelay) {
		t.Fatalf("WAL %s-%s of timeline 2 read through r2 differs from the new primary's", pgcluster.FormatLSN(switchLSN), pgcluster.FormatLSN(final))
	}
	t.Logf("%s: standbys converged, %d bytes of WAL through two relays byte-identical, server_version %s; after failover to c1, %d acknowledged commits on every standby, timeline 2 WAL byte-identical",
		bin, len(fromPrimary), version, acked)
}

// commandAnswersMatch sends the commands whose answers differ between
// majors, in order on one connection, to the server and through the relay,
// and requires the same answers: the relay parses with its upstream's
// grammar, answers for its own slots as the server does for its physical
// ones, and passes ALTER_REPLICATION_SLOT and UPLOAD_MANIFEST (17 on)
// through to the server.
func commandAnswersMatch(t *testing.T, server, relay string) {
	t.Helper()
	steps := []struct {
		q      string
		copyIn []byte
	}{
		{"SELECT 1", nil},
		{"CREATE_REPLICATION_SLOT matrix_phys PHYSICAL (FAILOVER)", nil},
		{"CREATE_REPLICATION_SLOT matrix_phys PHYSICAL (RESERVE_WAL false)", nil},
		{"CREATE_REPLICATION_SLOT matrix_phys PHYSICAL", nil},
		{"ALTER_REPLICATION_SLOT matrix_phys (FAILOVER)", nil},
		{"ALTER_REPLICATION_SLOT matrix_phys (TWO_PHASE)", nil},
		{"ALTER_REPLICATION_SLOT matrix_phys (FAILOVER, FAILOVER)", nil},
		{"ALTER_REPLICATION_SLOT matrix_nosuch (FAILOVER)", nil},
		{"UPLOAD_MANIFEST", nil},
		{"UPLOAD_MANIFEST", []byte("{ not a manifest")},
		{"DROP_REPLICATION_SLOT matrix_phys", nil},
		{"DROP_REPLICATION_SLOT UPLOAD_MANIFEST", nil},
		{"IDENTIFY_SYSTEM", nil},
	}
	sc, rc := dialRepl(t, server), dialRepl(t, relay)
	for _, st := range steps {
		want, _ := sc.run(st.q, st.copyIn)
		got, _ := rc.run(st.q, st.copyIn)
		if !reflect.DeepEqual(want, got) {
			t.Errorf("%s: the relay answers %+v, the server %+v", st.q, got, want)
		}
	}
}

// alterFailoverSlotThroughRelays: ALTER_REPLICATION_SLOT on a slot the
// relays do not hold reaches the primary through both relays and changes its
// logical slot there.
func alterFailoverSlotThroughRelays(t *testing.T, primary *pgcluster.Cluster, relay *relayProc) {
	t.Helper()
	ctx := context.Background()
	if err := primary.Exec(ctx, "SELECT pg_create_logical_replication_slot('matrix_logical', 'pgoutput')"); err != nil {
		t.Fatal(err)
	}
	defer primary.Exec(ctx, "SELECT pg_drop_replication_slot('matrix_logical')")
	failover := func() bool {
		conn, err := primary.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		var f bool
		if err := conn.QueryRow(ctx, "SELECT failover FROM pg_replication_slots WHERE slot_name = 'matrix_logical'").Scan(&f); err != nil {
			t.Fatal(err)
		}
		return f
	}
	if failover() {
		t.Fatal("matrix_logical created with failover")
	}
	ans, _ := dialRepl(t, relay.Conninfo()).run("ALTER_REPLICATION_SLOT matrix_logical (FAILOVER)", nil)
	if ans.Error != "" || !reflect.DeepEqual(ans.Tags, []string{"ALTER_REPLICATION_SLOT"}) {
		t.Fatalf("ALTER_REPLICATION_SLOT through the relays: %+v", ans)
	}
	if !failover() {
		t.Fatal("ALTER_REPLICATION_SLOT through the relays answered, but the primary's slot has no failover")
	}
}

// incrementalBackupThroughRelays: pg_basebackup --incremental's commands
// through two relays. A full backup's manifest uploaded with UPLOAD_MANIFEST
// is used by BASE_BACKUP (INCREMENTAL) on the same connection, so the
// backup holds an incremental file of the table changed since, much smaller
// than the table; on another connection the server refuses as it would.
func incrementalBackupThroughRelays(t *testing.T, primary *pgcluster.Cluster, relay *relayProc) {
	t.Helper()
	ctx := context.Background()
	conn, err := primary.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var relPath string
	err = conn.QueryRow(ctx, "SELECT pg_relation_filepath('t')").Scan(&relPath)
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ans, full := dialRepl(t, relay.Conninfo()).run("BASE_BACKUP (CHECKPOINT 'fast', MANIFEST 'yes')", nil)
	if ans.Error != "" || full == nil || len(full.Manifest) == 0 || full.Files[relPath] == 0 {
		t.Fatalf("full BASE_BACKUP through the relays: %+v; manifest %d bytes, %s %d bytes", ans, len(full.Manifest), relPath, full.Files[relPath])
	}
	if err := primary.Exec(ctx, "UPDATE t SET v = 'incremental' WHERE id <= 10"); err != nil {
		t.Fatal(err)
	}
	const incremental = "BASE_BACKUP (INCREMENTAL, CHECKPOINT 'fast', MANIFEST 'yes')"
	want, _ := dialRepl(t, primary.ReplicationConnString()).run(incremental, nil)
	got, _ := dialRepl(t, relay.Conninfo()).run(incremental, nil)
	if want.Code == "" || !reflect.DeepEqual(want, got) {
		t.Errorf("BASE_BACKUP (INCREMENTAL) without a manifest: the relay answers %+v, the server %+v", got, want)
	}
	c := dialRepl(t, relay.Conninfo())
	if ans, _ := c.run("UPLOAD_MANIFEST", full.Manifest); ans.Error != "" {
		t.Fatalf("UPLOAD_MANIFEST through the relays: %+v", ans)
	}
	ans, inc := c.run(incremental, nil)
	dir, file := path.Split(relPath)
	incPath := dir + "INCREMENTAL." + file
	size, ok := inc.Files[incPath]
	if ans.Error != "" || !ok {
		t.Fatalf("incremental BASE_BACKUP through the relays: %+v, %s in it: %t", ans, incPath, ok)
	}
	if size*2 > full.Files[relPath] {
		t.Errorf("%s is %d bytes, the full file %d: not incremental", incPath, size, full.Files[relPath])
	}
	t.Logf("incremental backup through two relays: %s %d bytes (full %d), %d files", incPath, size, full.Files[relPath], len(inc.Files))
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

// readWALRange streams WAL [start, end) of timeline tli with a replication
// client of the project's own and returns it.
func readWALRange(t *testing.T, conninfo string, tli uint32, start, end uint64) []byte {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	conn, err := pgconn.Connect(ctx, conninfo+" replication=true")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: fmt.Sprintf("START_REPLICATION %s TIMELINE %d", pgcluster.FormatLSN(start), tli)})
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
