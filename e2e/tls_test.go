package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walrelay/walrelay/internal/pgcluster"
	"github.com/walrelay/walrelay/internal/testcert"
)

// givePostgres hands a file to the postgres user when running as root (the
// server refuses a key file it does not own).
func givePostgres(t *testing.T, path string) {
	t.Helper()
	if os.Geteuid() != 0 {
		return
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
}

// A TLS chain with verify-full on every link: primary -> r1 -> r2 ->
// standby, the relays requiring TLS and SCRAM by access rules. A plaintext
// client is refused; after the rules file changes and SIGHUP, it is let
// in, while the standby's stream goes on undisturbed.
func TestTLSChainVerifyFull(t *testing.T) {
	requirePG(t)
	ctx := context.Background()
	primary := newPgbenchPrimary(t, 1)
	dir := filepath.Join(clusterBase(t), "certs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	ca, err := testcert.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	pgCrt, pgKey, err := ca.Server("primary")
	if err != nil {
		t.Fatal(err)
	}
	givePostgres(t, pgKey)
	for _, sql := range []string{
		"ALTER SYSTEM SET ssl = on",
		fmt.Sprintf("ALTER SYSTEM SET ssl_cert_file = '%s'", pgCrt),
		fmt.Sprintf("ALTER SYSTEM SET ssl_key_file = '%s'", pgKey),
		"SELECT pg_reload_conf()",
	} {
		if err := primary.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	relayCrt, relayKey, err := ca.Server("relay")
	if err != nil {
		t.Fatal(err)
	}
	auth := filepath.Join(dir, "users")
	os.WriteFile(auth, []byte("replicator:s3cret\n"), 0o600)
	rules := filepath.Join(dir, "rules")
	os.WriteFile(rules, []byte("hostssl all all scram-sha-256\nhost all all reject\n"), 0o644)
	verify := " sslmode=verify-full sslrootcert=" + ca.File
	tlsArgs := []string{"--tls-cert", relayCrt, "--tls-key", relayKey, "--auth-file", auth, "--access-rules", rules}
	r1 := startRelay(t, "r1", primary.ReplicationConnString()+verify, tlsArgs...)
	r2 := startRelay(t, "r2", fmt.Sprintf("host=127.0.0.1 port=%d user=replicator password=s3cret", r1.Port())+verify, tlsArgs...)
	s := newStandby(t, primary, "s", fmt.Sprintf("host=127.0.0.1 port=%d user=replicator password=s3cret", r2.Port())+verify)
	waitStreaming(t, r2, 1, 30*time.Second)
	if err := primary.Pgbench(ctx, 2, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, s)

	// Every link is TLS: the primary sees r1 over SSL, each relay sees its
	// child over SSL.
	conn, err := primary.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ssl bool
	err = conn.QueryRow(ctx, "SELECT ssl FROM pg_stat_ssl JOIN pg_stat_replication USING (pid) WHERE application_name = 'r1'").Scan(&ssl)
	conn.Close(ctx)
	if err != nil || !ssl {
		t.Errorf("primary -> r1 not over TLS: ssl=%v err=%v", ssl, err)
	}
	sessionPID := func(r *relayProc) (float64, bool) {
		ds, _ := r.Status(t)["downstreams"].([]any)
		for _, d := range ds {
			m, _ := d.(map[string]any)
			if m["state"] == "streaming" {
				return m["pid"].(float64), m["ssl"] == true
			}
		}
		return 0, false
	}
	if _, ok := sessionPID(r1); !ok {
		t.Errorf("r1 -> r2 not over TLS")
	}
	pidBefore, ok := sessionPID(r2)
	if !ok {
		t.Errorf("r2 -> standby not over TLS")
	}

	plain := fmt.Sprintf("host=127.0.0.1 port=%d user=replicator password=s3cret sslmode=disable replication=true", r2.Port())
	_, err = pgconn.Connect(ctx, plain)
	var pgErr *pgconn.PgError
	if err == nil || !strings.Contains(err.Error(), "access rules reject connection") || !errors.As(err, &pgErr) || pgErr.Code != "28000" {
		t.Fatalf("plaintext client: %v, want 28000 access rules reject", err)
	}
	wrongCA, _ := testcert.NewCA(t.TempDir(), "other")
	if _, err := pgconn.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=replicator password=s3cret replication=true sslmode=verify-full sslrootcert=%s", r2.Port(), wrongCA.File)); err == nil {
		t.Errorf("verify-full against another CA succeeded")
	}

	// New rules, SIGHUP: plaintext with a password is let in; the TLS
	// stream to the standby is the same session as before.
	os.WriteFile(rules, []byte("hostssl all all scram-sha-256\nhost all 127.0.0.1/32 scram-sha-256\n"), 0o644)
	r2.cmd.Process.Signal(syscall.SIGHUP)
	waitFor(t, 10*time.Second, "plaintext accepted after SIGHUP", func() (bool, error) {
		c, err := pgconn.Connect(ctx, plain)
		if err != nil {
			return false, nil
		}
		c.Close(ctx)
		return true, nil
	})
	if err := primary.Pgbench(ctx, 2, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, s)
	if pidAfter, ok := sessionPID(r2); pidAfter != pidBefore || !ok {
		t.Errorf("the standby's TLS session changed across the reload: pid %v -> %v", pidBefore, pidAfter)
	}
	// A malformed rules file is refused on reload and changes nothing.
	os.WriteFile(rules, []byte("host all all md5\n"), 0o644)
	r2.cmd.Process.Signal(syscall.SIGHUP)
	time.Sleep(500 * time.Millisecond)
	if c, err := pgconn.Connect(ctx, plain); err != nil {
		t.Errorf("a bad rules file on reload changed the rules: %v", err)
	} else {
		c.Close(ctx)
	}
	if !strings.Contains(tail(r2.LogFile, 50), "reload failed") {
		t.Errorf("the refused reload was not logged")
	}
}

// A manager over TLS, as an operator runs it: the CLI reaches it with
// https and WALRELAY_MANAGER_CA, and a relay registers with --manager-ca;
// without the CA the CLI refuses the certificate.
func TestManagerTLSFromTheCLI(t *testing.T) {
	requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	dir := filepath.Join(testDir(t), "mgr-certs")
	os.MkdirAll(dir, 0o755)
	ca, err := testcert.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	crt, key, err := ca.Server("m1")
	if err != nil {
		t.Fatal(err)
	}
	rp, _ := pgcluster.FreePort()
	hp, _ := pgcluster.FreePort()
	url := fmt.Sprintf("https://127.0.0.1:%d", hp)
	startBinary(t, "m1", nil, "manager", "--node-id", "m1", "--raft-addr", fmt.Sprintf("127.0.0.1:%d", rp),
		"--http", fmt.Sprintf("127.0.0.1:%d", hp), "--data-dir", filepath.Join(testDir(t), "m1"), "--bootstrap",
		"--tls-cert", crt, "--tls-key", key, "--tls-ca", ca.File)
	withCA := func(args ...string) (string, error) {
		cmd := exec.Command(relayBin, args...)
		cmd.Env = append(os.Environ(), "WALRELAY_MANAGER_CA="+ca.File)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	waitFor(t, 20*time.Second, "manager over https", func() (bool, error) {
		_, err := withCA("tree", "--manager", url)
		return err == nil, nil
	})
	if out, err := withCA("primary", "set", "pg", "--conninfo", primary.ReplicationConnString(), "--manager", url); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	r1 := startRelay(t, "r1", "", "--manager", url, "--manager-ca", ca.File)
	waitFor(t, 30*time.Second, "relay registered over https and streaming", func() (bool, error) {
		up, _ := r1.Status(t)["upstream"].(map[string]any)
		return up["state"] == "streaming", nil
	})
	if out, err := walrelayCLI("tree", "--manager", url); err == nil || !strings.Contains(out, "certificate") {
		t.Errorf("tree without the CA: %v %s, want a certificate error", err, out)
	}
}
