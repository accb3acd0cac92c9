package main

import (
	"strings"
	"testing"

	"github.com/walrelay/walrelay/topology"
)

func TestPrintTopology(t *testing.T) {
	tr := &topology.TreeResponse{Member: "m2", Leader: "m1", CommitIndex: 42, Tree: &topology.Tree{
		Epoch: 9, Primary: "pg1", Timeline: 2,
		Nodes: map[string]*topology.Node{
			"pg1": {Name: "pg1", Kind: topology.KindPrimary, State: topology.StateAlive},
			"r1":  {Name: "r1", Kind: topology.KindRelay, Zone: "a", State: topology.StateAlive, Parent: "pg1"},
			"r2":  {Name: "r2", Kind: topology.KindRelay, Zone: "b", State: topology.StateFailed, Parent: "pg1"},
			"s1":  {Name: "s1", Kind: topology.KindStandby, Zone: "a", Tier: topology.TierHigh, State: topology.StateAlive, Parent: "r1"},
			"s2":  {Name: "s2", Kind: topology.KindStandby, Zone: "a", Tier: topology.TierDefault, State: topology.StateAlive, Parent: "r1"},
			"s3":  {Name: "s3", Kind: topology.KindStandby, Tier: topology.TierBatch, State: topology.StateAlive},
		},
	}}
	var b strings.Builder
	printTopology(&b, tr)
	want := `epoch 9, timeline 2, leader m1, served by m2 at commit index 42

NODE                             ROLE     ZONE/TIER      STATE
pg1                              primary                 alive
├─ r1                            relay    a              alive
│  ├─ s1                         standby  a/high         alive
│  └─ s2                         standby  a/default      alive
└─ r2                            relay    b              failed
s3                               standby  /batch         alive
`
	if b.String() != want {
		t.Errorf("got:\n%s\nwant:\n%s", b.String(), want)
	}
}
