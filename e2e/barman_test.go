package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// barman runs the barman CLI with the test's configuration file and fails
// the test when it exits non-zero.
func barman(t *testing.T, cfg string, args ...string) string {
	t.Helper()
	out, err := barmanRun(cfg, args...)
	if err != nil {
		t.Fatalf("barman %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func barmanRun(cfg string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "barman", append([]string{"-c", cfg}, args...)...).CombinedOutput()
	return string(out), err
}

// Barman with streaming_conninfo pointing at a relay (conninfo at the
// primary, where Barman runs SQL): the slot is created through the relay
// with `barman receive-wal --create-slot`, `barman check` is all OK,
// `barman switch-wal --archive` sees the switched segment arrive through the
// relay, `barman backup` (backup_method = postgres: pg_basebackup through the
// relay) completes, and `barman recover` to a named restore point gives a
// cluster whose tables equal the primary's at that point.
func TestBarmanThroughRelay(t *testing.T) {
	t.Parallel() // waits on barman's polling more than it uses the CPU
	bin := requirePG(t)
	requireTool(t, "barman", "barman")
	ctx := context.Background()
	primary := newPgbenchPrimary(t, 1)
	relay := startRelay(t, "r1", primary.ReplicationConnString())
	waitUpstreamStreaming(t, relay)

	dir := testDir(t)
	home := filepath.Join(dir, "barman")
	cfg := filepath.Join(dir, "barman.conf")
	conf := fmt.Sprintf(`[barman]
barman_user = %s
barman_home = %s
log_file = %s
log_level = INFO

[pg]
description = "primary, WAL and backups through a walrelay relay"
conninfo = host=127.0.0.1 port=%d user=postgres dbname=postgres
streaming_conninfo = host=127.0.0.1 port=%d user=postgres
backup_method = postgres
streaming_archiver = on
slot_name = barman
path_prefix = %s
archiver = off
minimum_redundancy = 0
immediate_checkpoint = true
`, currentUser(t), home, filepath.Join(dir, "barman.log"), primary.Port, relay.Port(), bin)
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("barman log:\n%s", tail(filepath.Join(dir, "barman.log"), 40))
		}
	})

	barman(t, cfg, "receive-wal", "--create-slot", "pg")
	if rows := replicationQuery(t, relay.Conninfo(), "READ_REPLICATION_SLOT barman"); len(rows) != 1 || string(rows[0][0]) != "physical" {
		t.Fatalf("barman's slot is not on the relay: %q", rows)
	}
	// receive-wal runs in the foreground as `barman cron` would start it.
	receiver := startBackground(t, "barman receive-wal", filepath.Join(dir, "receive-wal.log"), nil, "barman", "-c", cfg, "receive-wal", "pg")
	waitStreaming(t, relay, 1, 30*time.Second)

	// The slot Barman checks with SQL on the primary: there, initialised and
	// held active by the relay while receive-wal streams from the relay.
	primarySlot := func() (exists, active bool, restart string) {
		conn, err := primary.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(ctx)
		err = conn.QueryRow(ctx, "SELECT active, COALESCE(restart_lsn::text, '') FROM pg_replication_slots WHERE slot_name = 'barman'").Scan(&active, &restart)
		return err == nil, active, restart
	}
	waitFor(t, 30*time.Second, "barman's slot active and initialised on the primary", func() (bool, error) {
		exists, active, restart := primarySlot()
		return exists && active && restart != "", nil
	})
	if err := primary.Pgbench(ctx, 2, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	out := barman(t, cfg, "switch-wal", "--archive", "--archive-timeout", "60", "pg")
	t.Logf("barman switch-wal --archive:\n%s", strings.TrimSpace(out))
	var check string
	waitFor(t, 60*time.Second, "barman check all OK", func() (bool, error) {
		var err error
		check, err = barmanRun(cfg, "check", "pg")
		return err == nil, nil
	})
	if strings.Contains(check, "FAILED") {
		t.Fatalf("barman check:\n%s", check)
	}
	t.Logf("barman check:\n%s", strings.TrimSpace(check))

	out = barman(t, cfg, "backup", "--wait", "pg")
	t.Logf("barman backup:\n%s", lastLines(out, 6))

	// Writes after the backup up to a named restore point, then more that
	// the recovery must not replay.
	if err := primary.Pgbench(ctx, 2, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	// Two statements: the restore point must follow the table's commit.
	for _, q := range []string{"CREATE TABLE barman_marker AS SELECT 1 AS id", "SELECT pg_create_restore_point('walrelay_barman')"} {
		if err := primary.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	want := map[string]string{}
	for _, table := range append(pgcluster.PgbenchTables, "barman_marker") {
		sum, err := primary.TableChecksum(ctx, table)
		if err != nil {
			t.Fatal(err)
		}
		want[table] = sum
	}
	if err := primary.Pgbench(ctx, 2, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	barman(t, cfg, "switch-wal", "--archive", "--archive-timeout", "60", "pg")

	dest := filepath.Join(dir, "recovered")
	out = barman(t, cfg, "recover", "--target-name", "walrelay_barman", "--target-action", "promote", "pg", "latest", dest)
	t.Logf("barman recover:\n%s", lastLines(out, 8))
	if out, err := exec.Command("chown", "-R", "postgres:postgres", dest).CombinedOutput(); err != nil {
		t.Fatalf("chown: %v: %s", err, out)
	}
	port, _ := pgcluster.FreePort()
	rec, err := pgcluster.Open("recovered", bin, dest, port, filepath.Join(dest, "recovered.log"))
	if err != nil {
		t.Fatal(err)
	}
	if err := rec.SetConf(map[string]string{"port": fmt.Sprint(port), "cluster_name": "recovered", "synchronous_standby_names": ""}); err != nil {
		t.Fatal(err)
	}
	startCluster(t, rec)
	waitFor(t, 60*time.Second, "the recovered cluster promoted at the restore point", func() (bool, error) {
		conn, err := rec.Connect(ctx)
		if err != nil {
			return false, nil
		}
		defer conn.Close(ctx)
		var inRecovery bool
		err = conn.QueryRow(ctx, "SELECT pg_is_in_recovery()").Scan(&inRecovery)
		return err == nil && !inRecovery, nil
	})
	for table, sum := range want {
		got, err := rec.TableChecksum(ctx, table)
		if err != nil {
			t.Fatal(err)
		}
		if got != sum {
			t.Errorf("recovered %s has checksum %s, the primary had %s at the restore point", table, got, sum)
		}
	}
	t.Logf("the cluster recovered by barman equals the primary at the restore point (%d tables)", len(want))

	// receive-wal stopped: the slot is inactive on the primary, and
	// --drop-slot through the relay removes it there too.
	// As a service manager stops it: SIGTERM to barman and its
	// pg_receivewal.
	syscall.Kill(-receiver.Process.Pid, syscall.SIGTERM)
	waitFor(t, 30*time.Second, "barman's slot inactive on the primary", func() (bool, error) {
		exists, active, _ := primarySlot()
		return exists && !active, nil
	})
	barman(t, cfg, "receive-wal", "--drop-slot", "pg")
	if exists, _, _ := primarySlot(); exists {
		t.Error("barman's slot is still on the primary after receive-wal --drop-slot through the relay")
	}
}

func currentUser(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("id", "-un").Output()
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(out))
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
