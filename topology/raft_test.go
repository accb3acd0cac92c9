package topology

import (
	"fmt"
	"io"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
)

// cluster is three managers' FSMs on raft's in-memory transport.
type cluster struct {
	rafts []*raft.Raft
	fsms  []*FSM
	trans []*raft.InmemTransport
	addrs []raft.ServerAddress
}

func newCluster(t *testing.T, n int) *cluster {
	t.Helper()
	c := &cluster{}
	var servers []raft.Server
	for i := 0; i < n; i++ {
		addr, tr := raft.NewInmemTransport(raft.ServerAddress(fmt.Sprintf("m%d", i)))
		c.trans = append(c.trans, tr)
		c.addrs = append(c.addrs, addr)
		servers = append(servers, raft.Server{ID: raft.ServerID(addr), Address: addr})
	}
	for i := range c.trans {
		for j := range c.trans {
			if i != j {
				c.trans[i].Connect(c.addrs[j], c.trans[j])
			}
		}
	}
	for i := 0; i < n; i++ {
		cfg := raft.DefaultConfig()
		cfg.LocalID = raft.ServerID(c.addrs[i])
		cfg.HeartbeatTimeout = 50 * time.Millisecond
		cfg.ElectionTimeout = 50 * time.Millisecond
		cfg.LeaderLeaseTimeout = 50 * time.Millisecond
		cfg.CommitTimeout = 5 * time.Millisecond
		cfg.Logger = hclog.New(&hclog.LoggerOptions{Output: io.Discard})
		store := raft.NewInmemStore()
		fsm := NewFSM()
		r, err := raft.NewRaft(cfg, fsm, store, store, raft.NewInmemSnapshotStore(), c.trans[i])
		if err != nil {
			t.Fatal(err)
		}
		c.rafts = append(c.rafts, r)
		c.fsms = append(c.fsms, fsm)
	}
	if err := c.rafts[0].BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, r := range c.rafts {
			r.Shutdown().Error()
		}
	})
	return c
}

func (c *cluster) leader(t *testing.T, except int) int {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for i, r := range c.rafts {
			if i != except && r.State() == raft.Leader {
				return i
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("no leader elected")
	return -1
}

func (c *cluster) apply(t *testing.T, i int, cmd Command) ApplyResult {
	t.Helper()
	f := c.rafts[i].Apply(cmd.Encode(), 2*time.Second)
	if err := f.Error(); err != nil {
		t.Fatalf("apply %+v: %v", cmd, err)
	}
	return f.Response().(ApplyResult)
}

// Committed assignments survive the loss of the leader, a partitioned
// leader cannot commit, and the rejoined member converges.
func TestRaftClusterKeepsCommittedTree(t *testing.T) {
	c := newCluster(t, 3)
	l := c.leader(t, -1)
	c.apply(t, l, Command{Op: OpSetPrimary, Name: "pg1", Timeline: 1})
	c.apply(t, l, Command{Op: OpRegisterRelay, Name: "r1"})
	r := c.apply(t, l, Command{Op: OpAssign, Name: "r1", Parent: "pg1"})
	if r.Err != nil || r.Epoch != 3 {
		t.Fatalf("assign: %+v", r)
	}

	// Partition the leader from the others.
	for j := range c.trans {
		if j != l {
			c.trans[l].Disconnect(c.addrs[j])
			c.trans[j].Disconnect(c.addrs[l])
		}
	}
	stale := c.rafts[l].Apply(Command{Op: OpRegisterRelay, Name: "ghost"}.Encode(), 300*time.Millisecond)
	if err := stale.Error(); err == nil {
		t.Fatal("a partitioned leader committed an entry")
	}
	nl := c.leader(t, l)
	c.apply(t, nl, Command{Op: OpRegisterRelay, Name: "r2"})
	c.apply(t, nl, Command{Op: OpAssign, Name: "r2", Parent: "r1"})

	// Heal: the old leader rejoins as a follower and converges.
	for j := range c.trans {
		if j != l {
			c.trans[l].Connect(c.addrs[j], c.trans[j])
			c.trans[j].Connect(c.addrs[l], c.trans[l])
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		trees := []*Tree{c.fsms[0].Tree(), c.fsms[1].Tree(), c.fsms[2].Tree()}
		same := true
		for _, tr := range trees {
			same = same && tr.Epoch == 5 && tr.Nodes["r2"] != nil && tr.Nodes["r2"].Parent == "r1" &&
				tr.Nodes["r1"].Parent == "pg1" && tr.Nodes["ghost"] == nil
		}
		if same {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("members did not converge: epochs %d %d %d", trees[0].Epoch, trees[1].Epoch, trees[2].Epoch)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
