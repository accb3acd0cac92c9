package topology

import (
	"context"
	"net"
	"path/filepath"
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
		DataDir: filepath.Join(t.TempDir(), id), Bootstrap: bootstrap, Join: join})
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
	tr, err := c.Tree(ctx)
	if err != nil || !want(tr) || tr.Tree.Epoch <= epoch || tr.Leader == leader.m.cfg.NodeID {
		t.Fatalf("after leader loss: %+v %v", tr, err)
	}
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
