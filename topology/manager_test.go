package topology

import (
	"context"
	"github.com/prometheus/client_golang/prometheus"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

type runningManager struct {
	m      *Manager
	url    string
	cancel context.CancelFunc
	done   chan error
}

func startManager(t *testing.T, id string, bootstrap bool, join []string) *runningManager {
	t.Helper()
	m, err := NewManager(ManagerConfig{NodeID: id, RaftAddr: freeAddr(t), HTTPAddr: freeAddr(t),
		DataDir: filepath.Join(t.TempDir(), id), Bootstrap: bootstrap, Join: join, FailureTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rm := &runningManager{m: m, url: "http://" + m.Addr(), cancel: cancel, done: make(chan error, 1)}
	go func() { rm.done <- m.Run(ctx) }()
	t.Cleanup(rm.stop)
	return rm
}

func (r *runningManager) stop() {
	if r.cancel != nil {
		r.cancel()
		<-r.done
		r.cancel = nil
	}
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Three managers over real TCP: writes sent to any member reach the
// leader, every member serves the same tree, and losing the leader loses
// no committed change.
func TestManagerCluster(t *testing.T) {
	m1 := startManager(t, "m1", true, nil)
	m2 := startManager(t, "m2", false, []string{m1.url})
	m3 := startManager(t, "m3", false, []string{m1.url})
	all := []*runningManager{m1, m2, m3}
	ctx := context.Background()
	c := &Client{URLs: []string{m3.url, m2.url, m1.url}}
	eventually(t, "three members registered", func() bool {
		tr, err := c.Tree(ctx)
		return err == nil && len(tr.Tree.Managers) == 3
	})
	for _, cmd := range []Command{
		{Op: OpSetPrimary, Name: "pg1", Conninfo: "host=pg1", Timeline: 1},
		{Op: OpRegisterRelay, Name: "r1", Zone: "a"},
		{Op: OpAddStandby, Name: "s1", Zone: "a", Tier: TierHigh},
		{Op: OpAssign, Assignments: map[string]string{"r1": "pg1", "s1": "r1"}},
	} {
		if _, err := c.Apply(ctx, cmd); err != nil {
			t.Fatalf("%+v: %v", cmd, err)
		}
	}
	if _, err := c.Apply(ctx, Command{Op: OpAssign, Name: "s1", Parent: "nowhere"}); err == nil {
		t.Error("invalid assignment accepted")
	}
	want := func(tr *TreeResponse) bool {
		return tr.Tree.Nodes["s1"] != nil && tr.Tree.Nodes["s1"].Parent == "r1" && tr.Tree.Primary == "pg1"
	}
	for _, m := range all {
		cm := &Client{URLs: []string{m.url}}
		eventually(t, "tree on "+m.m.cfg.NodeID, func() bool { tr, err := cm.Tree(ctx); return err == nil && want(tr) })
	}
	// Lose the leader.
	tr, _ := c.Tree(ctx)
	var leader *runningManager
	for _, m := range all {
		if m.m.cfg.NodeID == tr.Leader {
			leader = m
		}
	}
	if leader == nil {
		t.Fatalf("leader %q not found", tr.Leader)
	}
	epoch := tr.Tree.Epoch
	leader.stop()
	eventually(t, "a new leader accepting writes", func() bool {
		_, err := c.Apply(ctx, Command{Op: OpRegisterRelay, Name: "r2", Zone: "b"})
		return err == nil
	})
	// Members answer reads from what they have applied: wait for the one
	// asked to catch up.
	eventually(t, "the committed tree, with a new leader", func() bool {
		var err error
		tr, err = c.Tree(ctx)
		return err == nil && want(tr) && tr.Tree.Epoch > epoch && tr.Tree.Nodes["r2"] != nil &&
			tr.Leader != "" && tr.Leader != leader.m.cfg.NodeID
	})
	// Watch returns as soon as the epoch moves.
	got := make(chan uint64, 1)
	go func() {
		w, err := c.Watch(ctx, tr.Tree.Epoch)
		if err == nil {
			got <- w.Tree.Epoch
		}
	}()
	time.Sleep(100 * time.Millisecond)
	if _, err := c.Apply(ctx, Command{Op: OpAssign, Name: "r2", Parent: "pg1"}); err != nil {
		t.Fatal(err)
	}
	select {
	case e := <-got:
		if e <= tr.Tree.Epoch {
			t.Errorf("watch returned epoch %d", e)
		}
	case <-time.After(5 * time.Second):
		t.Error("watch did not return on a change")
	}
}

// A relay that stops heartbeating is marked failed and its children are
// re-assigned to a healthy relay; when it comes back it is alive again, as a
// leaf.
func TestManagerReparentsOnRelayFailure(t *testing.T) {
	m1 := startManager(t, "m1", true, nil)
	c := &Client{URLs: []string{m1.url}}
	ctx := context.Background()
	eventually(t, "leader", func() bool { tr, err := c.Tree(ctx); return err == nil && tr.Leader == "m1" })
	for _, cmd := range []Command{
		{Op: OpSetPrimary, Name: "pg1"},
		{Op: OpRegisterRelay, Name: "r1"},
		{Op: OpRegisterRelay, Name: "r2"},
		{Op: OpAddStandby, Name: "s1"},
		{Op: OpAddStandby, Name: "s2"},
	} {
		if _, err := c.Apply(ctx, cmd); err != nil {
			t.Fatal(err)
		}
	}
	beating := map[string]bool{"r1": true, "r2": true}
	var mu sync.Mutex
	hbCtx, stopHB := context.WithCancel(ctx)
	defer stopHB()
	go func() {
		for hbCtx.Err() == nil {
			mu.Lock()
			for name, on := range beating {
				if on {
					c.Heartbeat(hbCtx, name, nil)
				}
			}
			mu.Unlock()
			time.Sleep(200 * time.Millisecond)
		}
	}()
	parentOf := func(name string) string {
		tr, err := c.Tree(ctx)
		if err != nil || tr.Tree.Nodes[name] == nil {
			return ""
		}
		return tr.Tree.Nodes[name].Parent
	}
	eventually(t, "initial placement", func() bool {
		return parentOf("r1") == "pg1" && parentOf("r2") == "pg1" && parentOf("s1") != "" && parentOf("s2") != ""
	})
	if parentOf("s1") == parentOf("s2") {
		t.Errorf("both standbys on %s: placement should spread them", parentOf("s1"))
	}
	mu.Lock()
	beating["r1"] = false
	mu.Unlock()
	eventually(t, "r1 failed and its children moved to r2", func() bool {
		tr, err := c.Tree(ctx)
		return err == nil && tr.Tree.Nodes["r1"].State == StateFailed && parentOf("s1") == "r2" && parentOf("s2") == "r2"
	})
	mu.Lock()
	beating["r1"] = true
	mu.Unlock()
	eventually(t, "r1 alive again as a leaf", func() bool {
		tr, err := c.Tree(ctx)
		return err == nil && tr.Tree.Nodes["r1"].State == StateAlive && len(tr.Tree.Children("r1")) == 0
	})
}

func TestManagerMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewManager(ManagerConfig{NodeID: "m1", RaftAddr: freeAddr(t), HTTPAddr: freeAddr(t),
		DataDir: t.TempDir(), Bootstrap: true, Metrics: reg})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	defer func() { cancel(); <-done }()
	c := &Client{URLs: []string{"http://" + m.Addr()}}
	eventually(t, "leader", func() bool { return m.IsLeader() })
	if _, err := c.Apply(ctx, Command{Op: OpRegisterRelay, Name: "r1"}); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + m.Addr() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{"walrelay_manager_leader 1", `walrelay_tree_nodes{kind="relay",state="alive"} 1`, "walrelay_tree_epoch ", "walrelay_manager_raft_commit_index "} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
}
