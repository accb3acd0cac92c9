package e2e

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// pgTool runs one of PostgreSQL's client programs from bin and fails the
// test with its output when it exits non-zero.
func pgTool(t *testing.T, bin, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, filepath.Join(bin, name), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// untar extracts a tar archive, gzip-compressed when its name ends in .gz,
// into dir with the system's tar.
func untar(t *testing.T, archive, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("tar", "-xf", archive, "-C", dir).CombinedOutput(); err != nil {
		t.Fatalf("tar -xf %s: %v\n%s", archive, err, out)
	}
}

// Every pg_basebackup mode a DBA uses, run against a relay: the backup
// passes pg_verifybackup (which also parses its WAL with pg_waldump), the
// slot of -C is the relay's own, and the standby made from the -R backup
// streams from the relay and converges with the primary's tables.
func TestPgBasebackupModesThroughRelay(t *testing.T) {
	t.Parallel() // the tools wait on checkpoints and polls more than they use the CPU
	bin := requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	ctx := context.Background()
	relay := startRelay(t, "r1", primary.ReplicationConnString())
	waitUpstreamStreaming(t, relay)
	stopLoad := backgroundPgbench(t, primary, 2, 60*time.Second, "-R", "100")

	conn := []string{"-h", "127.0.0.1", "-p", fmt.Sprint(relay.Port()), "-U", "postgres", "-c", "fast", "--no-sync"}
	dir := testDir(t)
	for _, m := range []struct {
		name string
		args []string
		tar  bool
	}{
		{"stream", []string{"-X", "stream", "-P", "--manifest-checksums=SHA256"}, false},
		{"fetch", []string{"-X", "fetch"}, false},
		{"tar-gzip", []string{"-Ft", "-z", "-X", "stream"}, true},
		{"slot", []string{"-X", "stream", "-S", "bb_slot", "-C"}, false},
		{"max-rate", []string{"-X", "stream", "--max-rate=16M"}, false},
	} {
		out := filepath.Join(dir, "bb-"+m.name)
		start := time.Now()
		pgTool(t, bin, "pg_basebackup", append(append([]string{"-D", out}, conn...), m.args...)...)
		took := time.Since(start)
		verify := out
		if m.tar {
			// pg_verifybackup of 15 reads plain backups only.
			verify = filepath.Join(dir, "bb-"+m.name+"-plain")
			untar(t, filepath.Join(out, "base.tar.gz"), verify)
			untar(t, filepath.Join(out, "pg_wal.tar.gz"), filepath.Join(verify, "pg_wal"))
			if err := os.Rename(filepath.Join(out, "backup_manifest"), filepath.Join(verify, "backup_manifest")); err != nil {
				t.Fatal(err)
			}
		}
		res := pgTool(t, bin, "pg_verifybackup", verify)
		if !strings.Contains(res, "successfully verified") {
			t.Errorf("pg_verifybackup of the %s backup: %s", m.name, res)
		}
		t.Logf("pg_basebackup %s through the relay: %.1fs, verified", strings.Join(m.args, " "), took.Seconds())
	}
	// -C made the slot on the relay, where the backup's WAL was streamed.
	if rows := replicationQuery(t, relay.Conninfo(), "READ_REPLICATION_SLOT bb_slot"); len(rows) != 1 || string(rows[0][0]) != "physical" || len(rows[0][1]) == 0 {
		t.Errorf("READ_REPLICATION_SLOT bb_slot on the relay after pg_basebackup -C: %q", rows)
	}
	// --manifest-checksums=SHA256 took effect.
	if man, err := os.ReadFile(filepath.Join(dir, "bb-stream", "backup_manifest")); err != nil || !bytes.Contains(man, []byte(`"Checksum-Algorithm": "SHA256"`)) {
		t.Errorf("the stream backup's manifest has no SHA256 checksums (%v)", err)
	}

	// The -R backup is a standby of the relay.
	sb, err := pgcluster.BaseBackupFrom(ctx, bin, "127.0.0.1", relay.Port(), pgcluster.Options{BaseDir: clusterBase(t), Name: "fromrelay"})
	if err != nil {
		t.Fatal(err)
	}
	startCluster(t, sb)
	stopLoad()
	assertConverged(t, primary, sb)
	port, streaming, err := receiverOf(ctx, sb)
	if err != nil || !streaming || port != relay.Port() {
		t.Errorf("the standby from the -R backup streams from port %d (streaming %t, %v), want the relay's %d", port, streaming, err, relay.Port())
	}
}

// pg_receivewal through a relay as operators run it: a slot created,
// used and dropped with --create-slot/--slot/--drop-slot; --synchronous;
// --compress; a stop and a resume from the partial segment. Every completed
// segment equals the one received straight from the primary.
func TestPgReceivewalModesThroughRelay(t *testing.T) {
	t.Parallel() // the tools wait on checkpoints and polls more than they use the CPU
	bin := requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	ctx := context.Background()
	relay := startRelay(t, "r1", primary.ReplicationConnString())
	waitUpstreamStreaming(t, relay)
	host, port := "127.0.0.1", relay.Port()
	conn := []string{"-h", host, "-p", fmt.Sprint(port), "-U", "postgres"}

	pgTool(t, bin, "pg_receivewal", append(conn, "--create-slot", "-S", "rw_slot")...)
	if rows := replicationQuery(t, relay.Conninfo(), "READ_REPLICATION_SLOT rw_slot"); len(rows) != 1 || string(rows[0][0]) != "physical" {
		t.Fatalf("READ_REPLICATION_SLOT rw_slot after --create-slot: %q", rows)
	}
	direct := receiveWAL(t, bin, "direct", host, primary.Port)
	synced := receiveWAL(t, bin, "synced", host, port, "-S", "rw_slot", "--synchronous")
	gz := receiveWAL(t, bin, "gz", host, port, "--compress=gzip:5")

	switches := func(n int) {
		for i := 0; i < n; i++ {
			if err := primary.Pgbench(ctx, 2, time.Second); err != nil {
				t.Fatal(err)
			}
			if err := primary.Exec(ctx, "SELECT pg_switch_wal()"); err != nil {
				t.Fatal(err)
			}
		}
	}
	switches(2)
	// Stop the synchronous one mid-segment and resume it: it goes on from
	// its .partial file and the slot's position.
	if err := primary.Exec(ctx, "INSERT INTO pgbench_history SELECT * FROM pgbench_history"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	if err := synced.Stop(); err != nil {
		t.Fatal(err)
	}
	partials, _ := filepath.Glob(filepath.Join(synced.Dir, "*.partial"))
	if len(partials) != 1 {
		t.Fatalf("after a stop mid-segment the receiver left %d .partial files, want 1", len(partials))
	}
	switches(1)
	synced = receiveWAL(t, bin, "synced", host, port, "-S", "rw_slot", "--synchronous")
	switches(2)
	end, err := primary.CurrentLSN(ctx)
	if err != nil {
		t.Fatal(err)
	}
	waitRelayDurable(t, relay, end, 30*time.Second)
	// --synchronous flushes each message and says so at once: the relay's
	// slot follows it to the end.
	waitFor(t, 30*time.Second, "rw_slot at the primary's end", func() (bool, error) {
		rows := replicationQuery(t, relay.Conninfo(), "READ_REPLICATION_SLOT rw_slot")
		lsn, err := pgcluster.ParseLSN(string(rows[0][1]))
		return err == nil && lsn >= end, nil
	})
	time.Sleep(time.Second)
	for _, r := range []*pgcluster.WALReceiver{direct, synced, gz} {
		if err := r.Stop(); err != nil {
			t.Fatal(err)
		}
	}
	n, err := pgcluster.CompareSegments(direct.Dir, synced.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if n < 4 {
		t.Errorf("only %d completed segments in common with the resumed receiver", n)
	}
	// The gzip receiver's segments, decompressed, are the same bytes.
	plain := filepath.Join(testDir(t), "gz-plain")
	if err := os.MkdirAll(plain, 0o700); err != nil {
		t.Fatal(err)
	}
	gzs, _ := filepath.Glob(filepath.Join(gz.Dir, "*.gz"))
	for _, f := range gzs {
		gunzipTo(t, f, filepath.Join(plain, strings.TrimSuffix(filepath.Base(f), ".gz")))
	}
	m, err := pgcluster.CompareSegments(direct.Dir, plain)
	if err != nil {
		t.Fatal(err)
	}
	if m < 4 {
		t.Errorf("only %d gzip-compressed completed segments in common with the direct receiver", m)
	}
	pgTool(t, bin, "pg_receivewal", append(conn, "--drop-slot", "-S", "rw_slot")...)
	if _, ok := relay.Status(t)["slots"].([]any); ok {
		for _, s := range relay.Status(t)["slots"].([]any) {
			if sm, _ := s.(map[string]any); sm["name"] == "rw_slot" {
				t.Errorf("rw_slot still on the relay after --drop-slot: %v", sm)
			}
		}
	}
	t.Logf("%d completed segments from the resumed --synchronous receiver and %d from the gzip one equal the primary's", n, m)
}

func gunzipTo(t *testing.T, src, dst string) {
	t.Helper()
	f, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatalf("%s: %v", src, err)
	}
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	if _, err := io.Copy(out, zr); err != nil {
		t.Fatalf("%s: %v", src, err)
	}
}

func waitUpstreamStreaming(t *testing.T, r *relayProc) {
	t.Helper()
	waitFor(t, 30*time.Second, "relay "+r.ID+" streaming from its upstream", func() (bool, error) {
		up, _ := r.Status(t)["upstream"].(map[string]any)
		return up["state"] == "streaming", nil
	})
}
