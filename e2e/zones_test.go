package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
	"github.com/walrelay/walrelay/topology"
)

// Issue 18's regions with real processes: the primary and relay ra in zone
// a, relays rb1 and rb2 in zone b, two standbys in zone b. Region b is fed
// by a relay over a compressed link, never straight from the primary, and
// its standbys stream from its relays. SIGKILL of the b relay a standby
// streams from moves its children to the other b relay (neither ra nor the
// primary); SIGKILL of that one moves them across to ra. Checked in the
// managers' tree and in each node's actual upstream.
func TestZoneAwareReparenting(t *testing.T) {
	t.Parallel() // waits on timers more than it uses the CPU: runs beside the other manager tests
	requirePG(t)
	ctx := context.Background()
	primary := newPgbenchPrimary(t, 1)
	m := startManagerProc(t, "m1", "", "--failure-timeout", "3s")
	waitFor(t, 20*time.Second, "manager leader", func() (bool, error) {
		_, err := walrelayCLI("tree", "--manager", m.url)
		return err == nil, nil
	})
	setPrimaryInZone(t, m.url, "pg", primary.ConnString(), "a")

	relays := map[string]*relayProc{}
	killed := map[string]bool{}
	portOf := func(name string) int {
		if name == "pg" {
			return primary.Port
		}
		if r := relays[name]; r != nil {
			return r.Port()
		}
		return 0
	}
	// streamsFrom: the node's actual upstream, as the leader last heard it
	// from the relay, is parent's port.
	streamsFrom := func(tr *topology.TreeResponse, node, parent string) bool {
		if tr.Status == nil {
			return false
		}
		st := tr.Status.Nodes[node]
		return st.Streaming && strings.HasSuffix(st.Upstream, fmt.Sprintf(":%d", portOf(parent)))
	}
	// Start the relays one by one, as an operator would region by region:
	// each registers once the ones before it are placed.
	for _, r := range []struct{ id, zone string }{{"ra", "a"}, {"rb1", "b"}, {"rb2", "b"}} {
		relays[r.id] = startRelay(t, r.id, "", "--manager", m.url, "--zone", r.zone, "--log-level", "info")
		waitFor(t, 30*time.Second, r.id+" placed and streaming", func() (bool, error) {
			tr, err := treeJSON(m.url)
			if err != nil {
				return false, nil
			}
			n := tr.Tree.Nodes[r.id]
			return n != nil && n.Parent != "" && streamsFrom(tr, r.id, n.Parent), nil
		})
	}
	tr, err := treeJSON(m.url)
	if err != nil {
		t.Fatal(err)
	}
	if p := tr.Tree.Nodes["ra"].Parent; p != "pg" {
		t.Fatalf("ra is under %s, want the primary", p)
	}
	for _, id := range []string{"rb1", "rb2"} {
		if p := tr.Tree.Nodes[id].Parent; relays[p] == nil {
			t.Fatalf("%s is under %s, want a relay", id, p)
		}
	}
	waitFor(t, 15*time.Second, "compressed links into region b", func() (bool, error) {
		tr, err := treeJSON(m.url)
		if err != nil || tr.Status == nil {
			return false, nil
		}
		return tr.Status.Nodes["rb1"].Compression == "zstd" && tr.Status.Nodes["rb2"].Compression == "zstd", nil
	})

	standbys := map[string]*pgcluster.Cluster{}
	for _, sb := range []struct{ name, tier string }{{"sb1", "high"}, {"sb2", "default"}} {
		standbys[sb.name] = newStandbyWith(t, primary, sb.name, primary.ReplicationConnString(), map[string]string{"wal_retrieve_retry_interval": "1s"})
		cliT(t, "standby", "add", sb.name, "--conninfo", standbys[sb.name].ConnString(), "--zone", "b", "--tier", sb.tier, "--manager", m.url)
	}
	// settle waits until every standby is assigned to want and streams
	// from it, and every live relay streams from its assigned parent; a
	// standby assigned to one of never fails the test at once.
	settle := func(what, want string, never ...string) time.Duration {
		t.Helper()
		start := time.Now()
		waitFor(t, 30*time.Second, what, func() (bool, error) {
			tr, err := treeJSON(m.url)
			if err != nil {
				return false, nil
			}
			for name, sb := range standbys {
				p := tr.Tree.Nodes[name].Parent
				for _, bad := range never {
					if p == bad {
						t.Fatalf("%s: %s was assigned to %s", what, name, p)
					}
				}
				if (want != "" && p != want) || (want == "" && !strings.HasPrefix(p, "rb")) {
					return false, nil
				}
				port, streaming, err := receiverOf(ctx, sb)
				if err != nil || !streaming || port != portOf(p) {
					return false, nil
				}
			}
			for id := range relays {
				if !killed[id] && !streamsFrom(tr, id, tr.Tree.Nodes[id].Parent) {
					return false, nil
				}
			}
			return true, nil
		})
		return time.Since(start)
	}
	settle("the standbys streaming from region b's relays", "", "pg", "ra")
	tr, err = treeJSON(m.url)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("tree:\n%s", cliT(t, "tree", "--manager", m.url))

	// Kill the b relay fed by ra when a standby streams from it (its b
	// sibling then loses its upstream as well), else sb1's.
	victim := tr.Tree.Nodes["sb1"].Parent
	for _, id := range []string{"rb1", "rb2"} {
		if tr.Tree.Nodes[id].Parent == "ra" && (tr.Tree.Nodes["sb1"].Parent == id || tr.Tree.Nodes["sb2"].Parent == id) {
			victim = id
		}
	}
	other := map[string]string{"rb1": "rb2", "rb2": "rb1"}[victim]
	relays[victim].Kill()
	killed[victim] = true
	took := settle(fmt.Sprintf("every standby streaming from %s after %s's SIGKILL", other, victim), other, "pg", "ra")
	t.Logf("the standbys stream from %s %.1fs after %s's SIGKILL", other, took.Seconds(), victim)
	if tr, err = treeJSON(m.url); err != nil {
		t.Fatal(err)
	}
	if p := tr.Tree.Nodes[other].Parent; p != "ra" {
		t.Errorf("%s is under %s, want ra", other, p)
	}

	relays[other].Kill()
	killed[other] = true
	took = settle(fmt.Sprintf("every standby streaming from ra after %s's SIGKILL", other), "ra", "pg")
	t.Logf("the standbys stream from ra %.1fs after %s's SIGKILL", took.Seconds(), other)
	t.Logf("tree:\n%s", cliT(t, "tree", "--manager", m.url))
	assertConverged(t, primary, standbys["sb1"], standbys["sb2"])
}

// setPrimaryInZone registers the primary in zone.
func setPrimaryInZone(t testing.TB, managers, name, conninfo, zone string) {
	t.Helper()
	cliT(t, "primary", "set", name, "--conninfo", conninfo, "--timeline", "1", "--zone", zone, "--manager", managers)
	tr, err := treeJSON(managers)
	if err != nil {
		t.Fatal(err)
	}
	if n := tr.Tree.Nodes[name]; n == nil || n.Kind != topology.KindPrimary || n.Zone != zone {
		t.Fatalf("primary %s: %+v, want kind primary in zone %s", name, n, zone)
	}
}
