package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/walstream"
)

// A relay killed with SIGKILL mid-stream restarts from its store; the
// standbys reconnect and converge, and every completed segment it stored is
// identical to the primary's.
func TestRelayKilledAndRestarted(t *testing.T) {
	requirePG(t)
	primary := newPgbenchPrimary(t, 2)
	ctx := context.Background()
	relay := startRelay(t, "r1", primary.ReplicationConnString())
	s1 := newStandby(t, primary, "standby1", relay.Conninfo())
	s2 := newStandby(t, primary, "standby2", relay.Conninfo())
	load := make(chan error, 1)
	go func() { load <- primary.Pgbench(ctx, 4, 12*time.Second) }()
	time.Sleep(4 * time.Second)
	relay.Kill()
	time.Sleep(1 * time.Second)
	relay.Restart(t)
	if err := <-load; err != nil {
		t.Fatal(err)
	}
	waitStreaming(t, relay, 2, 60*time.Second)
	assertConverged(t, primary, s1, s2)
	if err := primary.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
		t.Fatal(err)
	}
	target, _ := primary.CurrentLSN(ctx)
	waitRelayDurable(t, relay, target, 30*time.Second)
	// Stopped, so that its compactor does not turn a raw segment into a
	// compressed one under the comparison; both kinds are compared.
	relay.stop(t)
	n := compareStoreWithPgWAL(t, relay.DataDir, filepath.Join(primary.DataDir, "pg_wal"))
	t.Logf("%d completed segments in the relay's store (raw or compacted) equal the primary's", n)
}

// compareStoreWithPgWAL reads every completed segment of the (stopped)
// relay's store in its data directory dir, through the store so that
// compacted ones count too, and compares it byte for byte with the same
// segment in pgWAL where the primary still has it. It fails the test on a
// difference or when no segment was in both.
func compareStoreWithPgWAL(t *testing.T, dir, pgWAL string) int {
	t.Helper()
	store, err := walstream.OpenStore(dir, walstream.StoreOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer store.Close()
	id, ok := store.Identity()
	if !ok {
		t.Fatalf("store %s has no identity", dir)
	}
	n := 0
	for _, info := range store.SegmentInfos() {
		if !info.Complete {
			continue
		}
		name := walstream.SegmentFileName(info.Timeline, info.Start.SegmentNo(id.SegmentSize), id.SegmentSize)
		want, err := os.ReadFile(filepath.Join(pgWAL, name))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		got := make([]byte, id.SegmentSize)
		for off := 0; off < len(got); {
			m, err := store.ReadAt(info.Timeline, info.Start+walstream.LSN(off), got[off:])
			if err != nil {
				t.Fatalf("read segment %s from the relay's store at offset %d: %v", name, off, err)
			}
			off += m
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("segment %s in the relay's store differs from the primary's", name)
		}
		n++
	}
	if n == 0 {
		t.Fatalf("no completed segment in common between the relay's store %s and %s", dir, pgWAL)
	}
	return n
}

// Bad clients get clear errors while a standby on the same relay keeps
// streaming.
func TestBadInputDoesNotDisturbStandby(t *testing.T) {
	requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	ctx := context.Background()
	authFile := filepath.Join(t.TempDir(), "users")
	if err := os.WriteFile(authFile, []byte("# relay users\nreplicator:s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	relay := startRelay(t, "r1", primary.ReplicationConnString(), "--auth-file", authFile)
	standby := newStandby(t, primary, "standby1", relay.Conninfo()+" user=replicator password=s3cret")
	waitStreaming(t, relay, 1, 30*time.Second)
	standbyPID := childPID(t, relay, "standby1")
	load := make(chan error, 1)
	go func() { load <- primary.Pgbench(ctx, 2, 10*time.Second) }()

	base := fmt.Sprintf("host=127.0.0.1 port=%d sslmode=disable replication=true ", relay.Port())
	// Garbage bytes instead of a startup packet.
	nc, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", relay.Port()))
	if err != nil {
		t.Fatal(err)
	}
	nc.Write([]byte("\x00\x00\x00\x10garbage garbage garbage"))
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 1024)
	n, _ := nc.Read(buf)
	nc.Close()
	t.Logf("garbage client got %d bytes back before close", n)

	// Wrong password.
	_, err = pgconn.Connect(ctx, base+"user=replicator password=wrong")
	expectPgError(t, err, "28P01", `password authentication failed for user "replicator"`)
	_, err = pgconn.Connect(ctx, base+"user=nobody password=wrong")
	expectPgError(t, err, "28P01", `password authentication failed for user "nobody"`)

	conn, err := pgconn.Connect(ctx, base+"user=replicator password=s3cret")
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	// Unknown command.
	_, err = conn.Exec(ctx, "VACUUM").ReadAll()
	expectPgError(t, err, "0A000", "cannot execute SQL commands in WAL sender for physical replication")
	_, err = conn.Exec(ctx, "IDENTIFY_SYSTEM extra").ReadAll()
	expectPgError(t, err, "42601", "")
	// A segment neither the relay (it started after 0/1000000) nor the
	// primary (checkpoints removed it) holds.
	for i := 0; i < 2; i++ {
		if err := primary.Exec(ctx, "SELECT pg_switch_wal(); CHECKPOINT"); err != nil {
			t.Fatal(err)
		}
	}
	startReplicationExpectError(t, conn, "START_REPLICATION 0/1000000 TIMELINE 1", "58P01",
		"requested WAL segment 000000010000000000000001 has already been removed")
	// A position far in the future.
	startReplicationExpectError(t, conn, "START_REPLICATION FF/0 TIMELINE 1", "XX000", "")

	if err := <-load; err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, standby)
	// The standby kept the same connection throughout.
	if pid := childPID(t, relay, "standby1"); pid != standbyPID {
		t.Errorf("standby's relay session changed from pid %v to %v: it was disconnected", standbyPID, pid)
	}
}

// childPID is the relay session pid of the streaming child with the given
// application_name, or nil.
func childPID(t *testing.T, r *relayProc, app string) any {
	ds, _ := r.Status(t)["downstreams"].([]any)
	for _, d := range ds {
		if m, ok := d.(map[string]any); ok && m["application_name"] == app && m["state"] == "streaming" {
			return m["pid"]
		}
	}
	return nil
}

func expectPgError(t *testing.T, err error, code, msg string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Fatalf("want error %s %q, got %v", code, msg, err)
	}
	if pe.Code != code || (msg != "" && pe.Message != msg) {
		t.Fatalf("got %s %q, want %s %q", pe.Code, pe.Message, code, msg)
	}
	t.Logf("got expected error %s: %s", pe.Code, pe.Message)
}

func startReplicationExpectError(t *testing.T, conn *pgconn.PgConn, query, code, msg string) {
	t.Helper()
	fe := conn.Frontend()
	fe.Send(&pgproto3.Query{String: query})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var pgErr error
	for {
		m, err := conn.ReceiveMessage(ctx)
		if err != nil {
			t.Fatal(err)
		}
		switch m := m.(type) {
		case *pgproto3.ErrorResponse:
			pgErr = pgconn.ErrorResponseToPgError(m)
		case *pgproto3.ReadyForQuery:
			expectPgError(t, pgErr, code, msg)
			return
		case *pgproto3.CopyData:
			t.Fatalf("%s: got WAL", query)
		}
	}
}
