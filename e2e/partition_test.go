package e2e

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// The manager leader is cut off from the relays (every byte between them
// blackholed, the managers still reaching each other): the relays' heartbeats
// reach the leader through the followers, no relay is marked failed, none
// changes its upstream, and WAL keeps flowing.
func TestManagerLeaderPartitionedFromRelays(t *testing.T) {
	t.Parallel() // waits on timers more than it uses the CPU: runs beside the other manager tests
	requirePG(t)
	primary := newPgbenchPrimary(t, 1)
	m1 := startManagerProc(t, "m1", "")
	m2 := startManagerProc(t, "m2", m1.url)
	m3 := startManagerProc(t, "m3", m1.url)
	mgrs := []*managerProc{m1, m2, m3}
	waitFor(t, 30*time.Second, "three managers", func() (bool, error) {
		tr, err := treeJSON(m1.url)
		return err == nil && len(tr.Tree.Managers) == 3 && tr.Leader != "", nil
	})
	// The relays reach each manager through a fault proxy of its own.
	proxies := map[string]*faultProxy{}
	var urls []string
	for _, m := range mgrs {
		p := startFaultProxy(t, strings.TrimPrefix(m.url, "http://"))
		proxies[m.id] = p
		urls = append(urls, fmt.Sprintf("http://127.0.0.1:%d", p.Port()))
	}
	relayURLs := strings.Join(urls, ",")
	cliT(t, "primary", "set", "pg", "--conninfo", primary.ReplicationConnString(), "--manager", m1.url)
	r1 := startRelay(t, "r1", "", "--manager", relayURLs)
	r2 := startRelay(t, "r2", "", "--manager", relayURLs)
	waitFor(t, 30*time.Second, "relays streaming", func() (bool, error) {
		tr, err := treeJSON(m1.url)
		if err != nil || tr.Status == nil {
			return false, nil
		}
		return tr.Status.Nodes["r1"].Streaming && tr.Status.Nodes["r2"].Streaming, nil
	})
	since := func(r *relayProc) string {
		up, _ := r.Status(t)["upstream"].(map[string]any)
		return fmt.Sprint(up["state"], " ", up["since"])
	}
	before := map[string]string{"r1": since(r1), "r2": since(r2)}
	tr, _ := treeJSON(m1.url)
	leader := tr.Leader
	proxies[leader].SetBlackhole(true)
	proxies[leader].Cut()
	t.Logf("leader %s cut off from the relays", leader)
	if err := primary.Pgbench(t.Context(), 2, 10*time.Second); err != nil { // longer than --failure-timeout
		t.Fatal(err)
	}
	proxies[leader].SetBlackhole(false)
	now, err := treeJSON(m1.url)
	if err != nil {
		t.Fatal(err)
	}
	if now.Leader != leader {
		t.Logf("leadership moved to %s meanwhile", now.Leader)
	}
	for _, id := range []string{"r1", "r2"} {
		if st := now.Tree.Nodes[id].State; st != "alive" {
			t.Errorf("relay %s marked %s while only the leader was cut off from it", id, st)
		}
	}
	for id, r := range map[string]*relayProc{"r1": r1, "r2": r2} {
		if got := since(r); got != before[id] {
			t.Errorf("relay %s's upstream changed during the partition: %s -> %s", id, before[id], got)
		}
	}
	target, _ := primary.CurrentLSN(t.Context())
	waitRelayDurable(t, r1, target, 30*time.Second)
	waitRelayDurable(t, r2, target, 30*time.Second)
	t.Logf("no relay failed or moved; both hold the primary's final position")
}
