package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
	"github.com/walrelay/walrelay/topology"
)

// receiverOf reads where a standby's WAL receiver streams from, straight
// from the standby: the oracle, not the managers' view.
func receiverOf(ctx context.Context, c *pgcluster.Cluster) (port int, streaming bool, err error) {
	conn, err := c.Connect(ctx)
	if err != nil {
		return 0, false, err
	}
	defer conn.Close(context.Background())
	res, err := conn.PgConn().Exec(ctx, "SELECT status, sender_port FROM pg_stat_wal_receiver").ReadAll()
	if err != nil {
		return 0, false, err
	}
	if len(res) == 0 || len(res[0].Rows) == 0 {
		return 0, false, nil
	}
	row := res[0].Rows[0]
	port, _ = strconv.Atoi(string(row[1]))
	return port, string(row[0]) == "streaming", nil
}

func treeJSON(managers string) (*topology.TreeResponse, error) {
	out, err := walrelayCLI("tree", "--manager", managers, "-o", "json")
	if err != nil {
		return nil, fmt.Errorf("%v: %s", err, out)
	}
	var tr topology.TreeResponse
	if err := json.Unmarshal([]byte(out), &tr); err != nil {
		return nil, err
	}
	return &tr, nil
}

// The proof: 3 managers, 3 relays, 4 managed standbys (two with
// slots). The managers place the standbys and re-point them with ALTER
// SYSTEM; SIGKILL of the relay with children moves every child to a new
// parent and the standbys converge with matching checksums; killing the
// manager leader changes nothing in the tree and drops no relay stream;
// with every manager stopped, streaming goes on.
func TestManagedTreeSurvivesRelayAndManagerLoss(t *testing.T) {
	t.Parallel() // waits on timers more than it uses the CPU: runs beside the other manager tests
	requirePG(t)
	ctx := context.Background()
	primary := newPgbenchPrimary(t, 1)
	for _, slot := range []string{"s1_slot", "s3_slot"} {
		if err := primary.Exec(ctx, fmt.Sprintf("SELECT pg_create_physical_replication_slot('%s', true)", slot)); err != nil {
			t.Fatal(err)
		}
	}
	m1 := startManagerProc(t, "m1", "")
	m2 := startManagerProc(t, "m2", m1.url)
	m3 := startManagerProc(t, "m3", m1.url)
	mgrs := []*managerProc{m1, m2, m3}
	all := strings.Join([]string{m1.url, m2.url, m3.url}, ",")
	waitFor(t, 30*time.Second, "three managers", func() (bool, error) {
		tr, err := treeJSON(m1.url)
		return err == nil && len(tr.Tree.Managers) == 3, nil
	})
	cliT(t, "primary", "set", "pg", "--conninfo", primary.ReplicationConnString(), "--timeline", "1", "--manager", all)

	r1 := startRelay(t, "r1", "", "--manager", all, "--zone", "a")
	r2 := startRelay(t, "r2", "", "--manager", all, "--zone", "b")
	r3 := startRelay(t, "r3", "", "--manager", all, "--zone", "a")
	relays := map[string]*relayProc{"r1": r1, "r2": r2, "r3": r3}
	cliT(t, "move", "r3", "--to", "r1", "--manager", all)
	waitFor(t, 30*time.Second, "relays placed and streaming", func() (bool, error) {
		tr, err := treeJSON(all)
		if err != nil || tr.Status == nil {
			return false, nil
		}
		for name := range relays {
			if n := tr.Tree.Nodes[name]; n == nil || n.Parent == "" || !tr.Status.Nodes[name].Streaming {
				return false, nil
			}
		}
		return true, nil
	})

	// Standbys start out streaming straight from the primary; the managers
	// move them under relays.
	standbys := map[string]*pgcluster.Cluster{}
	for _, sb := range []struct{ name, zone, tier, slot string }{
		{"s1", "a", "high", "s1_slot"}, {"s2", "a", "default", ""}, {"s3", "b", "default", "s3_slot"}, {"s4", "b", "batch", ""},
	} {
		conf := map[string]string{"wal_retrieve_retry_interval": "1s"}
		if sb.slot != "" {
			conf["primary_slot_name"] = sb.slot
		}
		standbys[sb.name] = newStandbyWith(t, primary, sb.name, primary.ReplicationConnString(), conf)
		cliT(t, "standby", "add", sb.name, "--conninfo", standbys[sb.name].ConnString(), "--zone", sb.zone, "--tier", sb.tier, "--manager", all)
	}
	var tr *topology.TreeResponse
	waitFor(t, 60*time.Second, "every standby streaming from its assigned relay", func() (bool, error) {
		var err error
		if tr, err = treeJSON(all); err != nil {
			return false, nil
		}
		for name, sb := range standbys {
			parent := relays[tr.Tree.Nodes[name].Parent]
			if parent == nil {
				return false, nil
			}
			port, streaming, err := receiverOf(ctx, sb)
			if err != nil || !streaming || port != parent.Port() {
				return false, nil
			}
		}
		return true, nil
	})
	if len(tr.Tree.Children("r1")) < 2 {
		// Placement is deterministic but depends on registration order;
		// make sure the relay we kill has a standby as well as a relay.
		cliT(t, "move", "s2", "--to", "r1", "--manager", all)
		waitFor(t, 30*time.Second, "s2 under r1", func() (bool, error) {
			port, streaming, err := receiverOf(ctx, standbys["s2"])
			return err == nil && streaming && port == r1.Port(), nil
		})
		tr, _ = treeJSON(all)
	}
	t.Logf("tree before the relay failure:\n%s", cliT(t, "tree", "--manager", all))

	// Slots follow the standbys: every relay holds s1_slot and s3_slot.
	waitFor(t, 30*time.Second, "slots for managed standbys on every relay", func() (bool, error) {
		for _, r := range relays {
			slots, _ := r.Status(t)["slots"].([]any)
			have := map[string]bool{}
			for _, s := range slots {
				m, _ := s.(map[string]any)
				have[fmt.Sprint(m["name"])] = true
			}
			if !have["s1_slot"] || !have["s3_slot"] {
				return false, nil
			}
		}
		return true, nil
	})

	// portOf is where a node serves replication: the primary or a relay.
	portOf := func(name string) int {
		if name == "pg" {
			return primary.Port
		}
		if r := relays[name]; r != nil {
			return r.Port()
		}
		return 0
	}
	children := tr.Tree.Children("r1")
	t.Logf("killing r1 with children %v", children)
	load := make(chan error, 1)
	go func() { load <- primary.Pgbench(ctx, 2, 10*time.Second) }()
	time.Sleep(2 * time.Second)
	r1.Kill()
	killed := time.Now()
	waitFor(t, 30*time.Second, "every child of r1 streaming from a new parent", func() (bool, error) {
		now, err := treeJSON(all)
		if err != nil {
			return false, nil
		}
		for _, c := range children {
			parent := now.Tree.Nodes[c].Parent
			if parent == "r1" || portOf(parent) == 0 {
				return false, nil
			}
			if sb, ok := standbys[c]; ok {
				port, streaming, err := receiverOf(ctx, sb)
				if err != nil || !streaming || port != portOf(parent) {
					return false, nil
				}
				continue
			}
			up, _ := relays[c].Status(t)["upstream"].(map[string]any)
			target, _ := up["target"].(string)
			if up["state"] != "streaming" || !strings.Contains(target, fmt.Sprintf("port=%d", portOf(parent))) {
				return false, nil
			}
		}
		return true, nil
	})
	t.Logf("every child of r1 streams from a new parent %.1fs after the SIGKILL", time.Since(killed).Seconds())
	if err := <-load; err != nil {
		t.Fatal(err)
	}
	all4 := []*pgcluster.Cluster{standbys["s1"], standbys["s2"], standbys["s3"], standbys["s4"]}
	assertConverged(t, primary, all4...)
	for name, sb := range standbys {
		if strings.Contains(sb.LogTail(200), "does not exist") {
			t.Errorf("standby %s was refused a slot:\n%s", name, sb.LogTail(20))
		}
	}
	out := cliT(t, "tree", "--manager", all)
	t.Logf("tree after the relay failure:\n%s", out)
	if !strings.Contains(out, "r1") || !strings.Contains(out, "failed") {
		t.Errorf("r1 not shown failed")
	}
	waitFor(t, 15*time.Second, "lag figures for every standby", func() (bool, error) {
		now, err := treeJSON(all)
		if err != nil || now.Status == nil {
			return false, nil
		}
		for name := range standbys {
			st := now.Status.Nodes[name]
			if st.ReplayLSN == 0 || st.LagBytes == nil || st.Timeline != 1 {
				return false, nil
			}
		}
		return true, nil
	})

	// Kill the manager leader: a new one is elected, the tree is the same,
	// and no relay's stream was interrupted.
	before, err := treeJSON(all)
	if err != nil {
		t.Fatal(err)
	}
	since := func(r *relayProc) string {
		up, _ := r.Status(t)["upstream"].(map[string]any)
		return fmt.Sprint(up["state"], " ", up["since"])
	}
	sinceBefore := map[string]string{"r2": since(r2), "r3": since(r3)}
	var survivors []*managerProc
	for _, m := range mgrs {
		if m.id == before.Leader {
			m.cmd.Process.Kill()
			<-m.done
			m.done <- nil
			continue
		}
		survivors = append(survivors, m)
	}
	waitFor(t, 20*time.Second, "a new manager leader", func() (bool, error) {
		now, err := treeJSON(all)
		return err == nil && now.Leader != "" && now.Leader != before.Leader, nil
	})
	time.Sleep(7 * time.Second) // longer than --failure-timeout: nothing may be marked failed
	after, err := treeJSON(all)
	if err != nil {
		t.Fatal(err)
	}
	for name, n := range before.Tree.Nodes {
		a := after.Tree.Nodes[name]
		if a == nil || a.Parent != n.Parent || a.State != n.State {
			t.Errorf("node %s changed with the leader: %+v -> %+v", name, n, a)
		}
	}
	for name, s := range sinceBefore {
		if now := since(relays[name]); now != s || !strings.HasPrefix(now, "streaming") {
			t.Errorf("relay %s's upstream changed while the leader changed: %s -> %s", name, s, now)
		}
	}

	// Stop every manager: the data plane does not notice.
	for _, m := range survivors {
		m.cmd.Process.Kill()
		<-m.done
		m.done <- nil
	}
	if err := primary.Pgbench(ctx, 2, 3*time.Second); err != nil {
		t.Fatal(err)
	}
	assertConverged(t, primary, all4...)
	for name, s := range sinceBefore {
		if now := since(relays[name]); now != s {
			t.Errorf("relay %s's upstream changed with no manager running: %s -> %s", name, s, now)
		}
	}
}
