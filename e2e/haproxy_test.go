package e2e

import (
	"context"
	"encoding/csv"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// requireTool finds a program the operators' tools scenarios need, from
// Debian's packages; without it the test skips, or fails under
// WALRELAY_REQUIRE_TOOLS=1 (.ci/run installs them).
func requireTool(t *testing.T, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("WALRELAY_REQUIRE_TOOLS") == "1" {
			t.Fatalf("WALRELAY_REQUIRE_TOOLS=1: %s not found (apt-get install %s)", name, pkg)
		}
		t.Skipf("%s not found: apt-get install %s (WALRELAY_REQUIRE_TOOLS=1 makes this a failure)", name, pkg)
	}
	return p
}

// haproxyProc is haproxy running deploy/haproxy/haproxy.cfg with this
// test's addresses.
type haproxyProc struct {
	readPort  int
	statsAddr string
}

func startHAProxy(t *testing.T, bin, managerURL string, servers map[string]int) *haproxyProc {
	t.Helper()
	sample, err := os.ReadFile(filepath.Join("..", "deploy", "haproxy", "haproxy.cfg"))
	if err != nil {
		t.Fatal(err)
	}
	mu, err := url.Parse(managerURL)
	if err != nil {
		t.Fatal(err)
	}
	readPort, _ := pgcluster.FreePort()
	statsPort, _ := pgcluster.FreePort()
	var lines strings.Builder
	for name, port := range servers {
		fmt.Fprintf(&lines, "    server %s 127.0.0.1:%d\n", name, port)
	}
	cfg := regexp.MustCompile(`(?m)^    server .*\n`).ReplaceAllString(string(sample), "")
	cfg = strings.NewReplacer(
		"0.0.0.0:5433", fmt.Sprintf("127.0.0.1:%d", readPort),
		"127.0.0.1:8404", fmt.Sprintf("127.0.0.1:%d", statsPort),
		"check addr 10.0.0.10 port 7101", fmt.Sprintf("check addr 127.0.0.1 port %s", mu.Port()),
		"\nlisten stats", lines.String()+"\nlisten stats",
	).Replace(cfg)
	dir := testDir(t)
	cfgPath := filepath.Join(dir, "haproxy.cfg")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	startBackground(t, "haproxy", filepath.Join(dir, "haproxy.log"), nil, bin, "-f", cfgPath, "-db")
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("haproxy.cfg:\n%s", cfg)
		}
	})
	return &haproxyProc{readPort: readPort, statsAddr: fmt.Sprintf("127.0.0.1:%d", statsPort)}
}

// status is each server's state on HAProxy's stats page (UP, DOWN, ...).
func (h *haproxyProc) status(t *testing.T) map[string]string {
	t.Helper()
	resp, err := http.Get("http://" + h.statsAddr + "/stats;csv")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	r := csv.NewReader(resp.Body)
	r.FieldsPerRecord = -1
	rows, err := r.ReadAll()
	if err != nil || len(rows) == 0 {
		return nil
	}
	col := map[string]int{}
	for i, name := range rows[0] {
		col[strings.TrimPrefix(name, "# ")] = i
	}
	out := map[string]string{}
	for _, row := range rows[1:] {
		if row[col["pxname"]] == "postgres_reads" && row[col["svname"]] != "FRONTEND" && row[col["svname"]] != "BACKEND" {
			out[row[col["svname"]]] = strings.Fields(row[col["status"]])[0]
		}
	}
	return out
}

// reads opens n connections through HAProxy and counts which standby
// (cluster_name) each reached.
func (h *haproxyProc) reads(t *testing.T, n int) map[string]int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out := map[string]int{}
	for i := 0; i < n; i++ {
		conn, err := pgx.Connect(ctx, fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", h.readPort))
		if err != nil {
			t.Fatalf("connect through haproxy: %v", err)
		}
		var name string
		err = conn.QueryRow(ctx, "SELECT current_setting('cluster_name')").Scan(&name)
		conn.Close(ctx)
		if err != nil {
			t.Fatal(err)
		}
		out[name]++
	}
	return out
}

// HAProxy routes reads with `option httpchk` against the managers'
// /v1/replicas/NAME/health?max_lag=1s, with deploy/haproxy/haproxy.cfg: a
// standby whose replay is paused leaves the pool within about a second of
// lagging and comes back after; when the relay of one standby dies, the
// other never leaves the pool and the first is back once re-parented.
func TestHAProxyRoutesReadsByLag(t *testing.T) {
	t.Parallel() // waits on health checks more than it uses the CPU
	requirePG(t)
	bin := requireTool(t, "haproxy", "haproxy")
	ctx := context.Background()
	mt := newManagedTree(t, nil, nil, []string{"r1", "r2"}, []standbySpec{{name: "s1", parent: "r1"}, {name: "s2", parent: "r2"}})
	s1, s2 := mt.standbys["s1"], mt.standbys["s2"]
	h := startHAProxy(t, bin, mt.mgr.url, map[string]int{"s1": s1.Port, "s2": s2.Port})
	bothUp := func() (bool, error) {
		st := h.status(t)
		return st["s1"] == "UP" && st["s2"] == "UP", nil
	}
	stopLoad := backgroundPgbench(t, mt.primary, 2, 2*time.Minute, "-R", "100")
	waitFor(t, 30*time.Second, "both standbys UP in haproxy", bothUp)
	if got := h.reads(t, 8); got["s1"] == 0 || got["s2"] == 0 {
		t.Fatalf("reads through haproxy reached %v, want both standbys", got)
	}

	// Replay paused: s1 falls behind and leaves the pool.
	if err := s1.Exec(ctx, "SELECT pg_wal_replay_pause()"); err != nil {
		t.Fatal(err)
	}
	paused := time.Now()
	waitFor(t, 15*time.Second, "paused s1 DOWN in haproxy", func() (bool, error) {
		return h.status(t)["s1"] == "DOWN", nil
	})
	left := time.Since(paused)
	if got := h.reads(t, 8); got["s1"] != 0 || got["s2"] != 8 {
		t.Errorf("with s1 down, reads through haproxy reached %v", got)
	}
	if err := s1.Exec(ctx, "SELECT pg_wal_replay_resume()"); err != nil {
		t.Fatal(err)
	}
	resumed := time.Now()
	waitFor(t, 15*time.Second, "resumed s1 UP again", bothUp)
	back := time.Since(resumed)
	t.Logf("paused s1 left the pool %.1fs after the pause (max_lag 1s, checks every 0.5s, fall 2); back %.1fs after resuming", left.Seconds(), back.Seconds())

	// r1 dies: s2 (under r2) never leaves the pool; s1 is re-parented to r2
	// and comes back, with nothing changed in HAProxy.
	mt.relays["r1"].Kill()
	killed := time.Now()
	var downs []string
	waitFor(t, 60*time.Second, "s1 streaming from r2 and UP in haproxy", func() (bool, error) {
		st := h.status(t)
		if st["s2"] != "UP" {
			downs = append(downs, fmt.Sprintf("%.1fs: s2 %s", time.Since(killed).Seconds(), st["s2"]))
		}
		port, streaming, err := receiverOf(ctx, s1)
		return err == nil && streaming && port == mt.relays["r2"].Port() && st["s1"] == "UP", nil
	})
	if len(downs) > 0 {
		t.Errorf("s2 left the pool when r1 died: %v", downs)
	}
	t.Logf("after r1's SIGKILL, s1 streams from r2 and is back in the pool %.1fs later; s2 stayed UP", time.Since(killed).Seconds())
	if got := h.reads(t, 8); got["s1"] == 0 || got["s2"] == 0 {
		t.Errorf("after the re-parent, reads through haproxy reached %v", got)
	}
	stopLoad()
}
