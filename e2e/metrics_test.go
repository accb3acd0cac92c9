package e2e

import (
	"context"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Every metric the Grafana dashboard in the repository queries is served
// by a running tree (relays and a manager), with its conventional name.
func TestMetricsMatchDashboard(t *testing.T) {
	requirePG(t)
	ctx := context.Background()
	_, here, _, _ := runtime.Caller(0)
	dash, err := os.ReadFile(filepath.Join(filepath.Dir(here), "..", "deploy", "grafana", "walrelay.json"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, m := range regexp.MustCompile(`walrelay_[a-z_]+`).FindAllString(string(dash), -1) {
		want[strings.TrimSuffix(m, "_bucket")] = true
	}
	primary := newPgbenchPrimary(t, 1)
	if err := primary.Exec(ctx, "SELECT pg_create_physical_replication_slot('s_slot', true)"); err != nil {
		t.Fatal(err)
	}
	m := startManagerProc(t, "m1", "")
	waitFor(t, 20*time.Second, "manager leader", func() (bool, error) {
		_, err := walrelayCLI("tree", "--manager", m.url)
		return err == nil, nil
	})
	cliT(t, "primary", "set", "pg", "--conninfo", primary.ReplicationConnString(), "--manager", m.url)
	r1 := startRelay(t, "r1", "", "--manager", m.url)
	r2 := startRelay(t, "r2", "", "--manager", m.url)
	cliT(t, "move", "r2", "--to", "r1", "--manager", m.url)
	s := newStandbyWith(t, primary, "s", primary.ReplicationConnString(), map[string]string{"primary_slot_name": "s_slot"})
	cliT(t, "standby", "add", "s", "--conninfo", s.ConnString(), "--manager", m.url)
	cliT(t, "move", "s", "--to", "r2", "--manager", m.url)
	waitStreaming(t, r2, 1, 60*time.Second)
	if err := primary.Pgbench(ctx, 1, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	var missing []string
	waitFor(t, 30*time.Second, "every dashboard metric served", func() (bool, error) {
		all := scrape(t, "http://"+r1.HTTP+"/metrics") + scrape(t, "http://"+r2.HTTP+"/metrics") + scrape(t, m.url+"/metrics")
		missing = missing[:0]
		for name := range want {
			if !regexp.MustCompile(`(?m)^` + name + `(_bucket)?[{ ]`).MatchString(all) {
				missing = append(missing, name)
			}
		}
		return len(missing) == 0, nil
	})
	if len(missing) > 0 {
		t.Errorf("dashboard metrics not served: %v", missing)
	}
	t.Logf("all %d metrics of deploy/grafana/walrelay.json are served", len(want))
}
