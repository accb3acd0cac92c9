package e2e

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// requirePG returns the PostgreSQL bin directory. Without PostgreSQL the
// test fails when WALRELAY_REQUIRE_PG=1 (CI) and is skipped otherwise.
func requirePG(t testing.TB) string {
	t.Helper()
	bin, err := pgcluster.FindBinDir()
	if err != nil {
		if os.Getenv("WALRELAY_REQUIRE_PG") == "1" {
			t.Fatalf("WALRELAY_REQUIRE_PG=1: %v", err)
		}
		t.Skipf("PostgreSQL not available (WALRELAY_REQUIRE_PG=1 makes this a failure): %v", err)
	}
	if testing.Short() {
		t.Skip("e2e tests need real PostgreSQL: skipped with -short")
	}
	return bin
}

// newPrimary creates and starts a primary, stopped at cleanup.
func newPrimary(t testing.TB, name string, conf map[string]string) *pgcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := pgcluster.InitPrimary(ctx, pgcluster.Options{BaseDir: clusterBase(t), Name: name, Conf: conf})
	if err != nil {
		t.Fatal(err)
	}
	startCluster(t, c)
	return c
}

// newPgbenchPrimary starts a primary holding pgbench tables of scale.
func newPgbenchPrimary(t testing.TB, scale int) *pgcluster.Cluster {
	t.Helper()
	c := newPrimary(t, "primary", nil)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.PgbenchInit(ctx, scale); err != nil {
		t.Fatal(err)
	}
	return c
}

// newStandby base-backs up src and starts a standby streaming from
// primaryConninfo, stopped at cleanup.
func newStandby(t testing.TB, src *pgcluster.Cluster, name, primaryConninfo string) *pgcluster.Cluster {
	t.Helper()
	return newStandbyWith(t, src, name, primaryConninfo, nil)
}

// newStandbyWith is newStandby with extra postgresql.conf settings.
func newStandbyWith(t testing.TB, src *pgcluster.Cluster, name, primaryConninfo string, conf map[string]string) *pgcluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if !strings.Contains(primaryConninfo, "application_name") {
		primaryConninfo += " application_name=" + name
	}
	c, err := pgcluster.BaseBackup(ctx, src, primaryConninfo, pgcluster.Options{BaseDir: clusterBase(t), Name: name, Conf: conf})
	if err != nil {
		t.Fatal(err)
	}
	startCluster(t, c)
	return c
}

func startCluster(t testing.TB, c *pgcluster.Cluster) {
	t.Helper()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("server log of %s:\n%s", c.Name, c.LogTail(40))
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Stop(ctx); err != nil {
			t.Logf("stop %s: %v; killing", c.Name, err)
			c.Kill()
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := c.Start(ctx); err != nil {
		t.Fatal(err)
	}
}

// clusterBase is one directory per test for all its clusters.
func clusterBase(t testing.TB) string {
	t.Helper()
	return filepath.Join(testDir(t), "clusters")
}

var (
	testDirsMu sync.Mutex
	testDirs   = map[string]string{} // test name -> its one t.TempDir()
)

// testDir is one temporary directory per test, shared by its clusters,
// relays and receivers.
func testDir(t testing.TB) string {
	t.Helper()
	testDirsMu.Lock()
	defer testDirsMu.Unlock()
	if d, ok := testDirs[t.Name()]; ok {
		return d
	}
	d := t.TempDir()
	testDirs[t.Name()] = d
	t.Cleanup(func() {
		testDirsMu.Lock()
		delete(testDirs, t.Name())
		testDirsMu.Unlock()
	})
	return d
}

// receiveWAL starts pg_receivewal against host:port into the test's
// directory; cleanup stops it. On failure its output is logged.
func receiveWAL(t testing.TB, bin, name, host string, port int, extra ...string) *pgcluster.WALReceiver {
	t.Helper()
	r, err := pgcluster.ReceiveWAL(context.Background(), bin, filepath.Join(testDir(t), "wal"), name, host, port, extra...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		r.Stop()
		if t.Failed() {
			t.Logf("pg_receivewal %s output:\n%s", name, tail(r.LogFile, 40))
		}
	})
	return r
}

// relayProc is a walrelay relay process.
type relayProc struct {
	ID, Listen, HTTP, DataDir, LogFile string
	args                               []string
	cmd                                *exec.Cmd
	done                               chan error
}

// startRelay runs `walrelay relay` against upstream and waits for /status.
func startRelay(t testing.TB, id, upstream string, extra ...string) *relayProc {
	t.Helper()
	if relayBuildErr != nil {
		t.Fatal(relayBuildErr)
	}
	port, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	hport, err := pgcluster.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(testDir(t), "relay-"+id)
	r := &relayProc{
		ID:      id,
		Listen:  fmt.Sprintf("127.0.0.1:%d", port),
		HTTP:    fmt.Sprintf("127.0.0.1:%d", hport),
		DataDir: dir,
		LogFile: filepath.Join(testDir(t), "relay-"+id+".log"),
	}
	r.args = append([]string{"relay", "--node-id", id, "--listen", r.Listen, "--upstream", upstream,
		"--data-dir", dir, "--http", r.HTTP, "--log-level", "debug"}, extra...)
	t.Cleanup(func() {
		r.stop(t)
		if b, err := os.ReadFile(r.LogFile); err == nil {
			if i := strings.Index(string(b), "WARNING: DATA RACE"); i >= 0 {
				t.Errorf("relay %s: the race detector reported:\n%s", id, string(b[i:min(len(b), i+6000)]))
			}
		}
		if t.Failed() {
			t.Logf("relay %s log tail:\n%s", id, tail(r.LogFile, 60))
		}
	})
	r.start(t)
	return r
}

func (r *relayProc) start(t testing.TB) {
	t.Helper()
	logf, err := os.OpenFile(r.LogFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(relayBin, r.args...)
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	if err := r.cmd.Start(); err != nil {
		logf.Close()
		t.Fatal(err)
	}
	r.done = make(chan error, 1)
	go func() {
		r.done <- r.cmd.Wait()
		logf.Close()
	}()
	waitFor(t, 30*time.Second, "relay "+r.ID+" /status", func() (bool, error) {
		select {
		case err := <-r.done:
			r.done <- err
			return false, fmt.Errorf("relay exited: %v\n%s", err, tail(r.LogFile, 30))
		default:
		}
		resp, err := http.Get("http://" + r.HTTP + "/status")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == 200, nil
	})
}

// stop sends SIGTERM and waits, then SIGKILL.
func (r *relayProc) stop(t testing.TB) {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	select {
	case err := <-r.done:
		r.done <- err
		return
	default:
	}
	r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-r.done:
		r.done <- err
		if err != nil {
			t.Errorf("relay %s exited with %v after SIGTERM", r.ID, err)
		}
	case <-time.After(stopLimit):
		t.Errorf("relay %s did not stop within %v of SIGTERM", r.ID, stopLimit)
		// SIGQUIT: the Go runtime writes every goroutine's stack to the
		// log, which shows what the shutdown waits for.
		r.cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-r.done:
		case <-time.After(5 * time.Second):
			r.cmd.Process.Kill()
			<-r.done
		}
		if b, err := os.ReadFile(r.LogFile); err == nil {
			if i := strings.LastIndex(string(b), "SIGQUIT"); i >= 0 {
				t.Logf("relay %s goroutines at SIGQUIT:\n%s", r.ID, b[i:min(len(b), i+30000)])
			}
		}
	}
}

// stopLimit is how long a relay may take to stop on SIGTERM. Its last
// steps are fsyncs (the store's tail, a compacted segment, the spare
// segment): with several tests' bulk loads being written back on one
// shared disk, one was seen to take over 20 s.
const stopLimit = 45 * time.Second

// Kill sends SIGKILL and waits for the process to be gone.
func (r *relayProc) Kill() {
	r.cmd.Process.Kill()
	err := <-r.done
	r.done <- err
}

// Restart starts the relay again with the same arguments.
func (r *relayProc) Restart(t testing.TB) { r.start(t) }

func (r *relayProc) Port() int {
	var p int
	fmt.Sscanf(r.Listen[strings.LastIndex(r.Listen, ":")+1:], "%d", &p)
	return p
}

// Conninfo is what a standby's primary_conninfo names to stream from it.
func (r *relayProc) Conninfo() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable", r.Port())
}

// Status fetches /status.
func (r *relayProc) Status(t testing.TB) map[string]any {
	t.Helper()
	resp, err := http.Get("http://" + r.HTTP + "/status")
	if err != nil {
		t.Fatalf("relay %s status: %v", r.ID, err)
	}
	defer resp.Body.Close()
	var m map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatalf("relay %s status: %v", r.ID, err)
	}
	return m
}

// waitFor polls cond until it holds, fails or the timeout passes.
func waitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var lastErr error
	for {
		ok, err := cond()
		if ok {
			return
		}
		if err != nil {
			lastErr = err
			var fatal interface{ Fatal() bool }
			if errors.As(err, &fatal) || strings.Contains(err.Error(), "relay exited") {
				t.Fatalf("waiting for %s: %v", what, err)
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, lastErr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func tail(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > n {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

// backgroundPgbench runs pgbench on c for at most d, until the returned
// stop is called; stop reports a pgbench that ended by itself with an error.
func backgroundPgbench(t testing.TB, c *pgcluster.Cluster, clients int, d time.Duration, extra ...string) (stop func()) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	load := make(chan error, 1)
	go func() { load <- c.Pgbench(ctx, clients, d, extra...) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			select {
			case err := <-load: // ended by itself: it must have succeeded
				if err != nil {
					t.Errorf("pgbench on %s: %v", c.Name, err)
				}
			default:
				cancel()
				<-load
			}
			cancel()
		})
	}
	t.Cleanup(stop)
	return stop
}

// startBackground runs a long-lived process in its own process group (as
// cred when set), logging to logPath; cleanup sends SIGTERM to the group,
// then SIGKILL.
func startBackground(t *testing.T, name, logPath string, cred *syscall.Credential, bin string, args ...string) *exec.Cmd {
	t.Helper()
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if cred != nil {
		os.Chown(logPath, int(cred.Uid), int(cred.Gid))
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: cred}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(30 * time.Second):
		}
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		if t.Failed() {
			t.Logf("%s log:\n%s", name, tail(logPath, 25))
		}
	})
	return cmd
}
