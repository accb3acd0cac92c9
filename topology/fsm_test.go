package topology

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/hashicorp/raft"
)

func applyAll(t *testing.T, f *FSM, cmds ...Command) []ApplyResult {
	t.Helper()
	var out []ApplyResult
	for i, c := range cmds {
		r := f.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: c.Encode()}).(ApplyResult)
		out = append(out, r)
	}
	return out
}

func TestFSMApply(t *testing.T) {
	f := NewFSM()
	res := applyAll(t, f,
		Command{Op: OpSetPrimary, Name: "pg1", Conninfo: "host=pg1", Timeline: 1},
		Command{Op: OpRegisterRelay, Name: "r1", Conninfo: "host=r1", Zone: "a"},
		Command{Op: OpRegisterRelay, Name: "r2", Conninfo: "host=r2", Zone: "b"},
		Command{Op: OpAddStandby, Name: "s1", Conninfo: "host=s1", Zone: "a", Promotable: true},
		Command{Op: OpAssign, Assignments: map[string]string{"r1": "pg1", "r2": "pg1", "s1": "r1"}},
		Command{Op: OpSetState, Name: "r1", State: StateFailed},
	)
	for i, r := range res {
		if r.Err != nil || r.Epoch != uint64(i+1) {
			t.Fatalf("command %d: %+v", i, r)
		}
	}
	tree := f.Tree()
	if tree.Epoch != 6 || tree.Primary != "pg1" || tree.Timeline != 1 {
		t.Fatalf("tree %+v", tree)
	}
	if s1 := tree.Nodes["s1"]; s1.Parent != "r1" || s1.Tier != TierDefault || !s1.Promotable {
		t.Errorf("s1 = %+v", s1)
	}
	if tree.Nodes["r1"].State != StateFailed {
		t.Error("r1 not failed")
	}
	if got := tree.Children("pg1"); strings.Join(got, ",") != "r1,r2" {
		t.Errorf("children of pg1: %v", got)
	}
}

// A placement computed before an operator's move commits must not undo
// the move (CI once saw "walrelay move r2 --to r1" lost this way, r2 left
// under the primary for good); nodes whose parent is as the placement saw
// it are still placed, and entries without Was apply as before.
func TestFSMPlacementDoesNotUndoAMove(t *testing.T) {
	f := NewFSM()
	res := applyAll(t, f,
		Command{Op: OpSetPrimary, Name: "pg1"},
		Command{Op: OpRegisterRelay, Name: "r1"},
		Command{Op: OpRegisterRelay, Name: "r2"},
		Command{Op: OpRegisterRelay, Name: "r3"},
		Command{Op: OpAssign, Assignments: map[string]string{"r1": "pg1"}},
		// The move commits ...
		Command{Op: OpAssign, Name: "r2", Parent: "r1", Pinned: true},
		// ... after a placement made from the tree before it.
		Command{Op: OpAssign, Assignments: map[string]string{"r2": "pg1", "r3": "pg1"}, Was: map[string]string{"r2": "", "r3": ""}},
	)
	for i, r := range res {
		if r.Err != nil {
			t.Fatalf("command %d: %v", i, r.Err)
		}
	}
	tree := f.Tree()
	if r2 := tree.Nodes["r2"]; r2.Parent != "r1" || !r2.Pinned {
		t.Errorf("r2 = %+v, want the operator's parent r1, pinned", r2)
	}
	if r3 := tree.Nodes["r3"]; r3.Parent != "pg1" {
		t.Errorf("r3 = %+v, want placed under pg1", r3)
	}
	// An entry from before Was existed assigns unconditionally.
	applyAll(t, f, Command{Op: OpAssign, Assignments: map[string]string{"r2": "pg1"}})
	if r2 := f.Tree().Nodes["r2"]; r2.Parent != "pg1" {
		t.Errorf("r2 = %+v after a placement without Was, want pg1", r2)
	}
}

func TestFSMRejectsInvalidCommandsWithoutChange(t *testing.T) {
	f := NewFSM()
	applyAll(t, f,
		Command{Op: OpSetPrimary, Name: "pg1"},
		Command{Op: OpRegisterRelay, Name: "r1"},
		Command{Op: OpRegisterRelay, Name: "r2"},
		Command{Op: OpAssign, Assignments: map[string]string{"r1": "pg1", "r2": "r1"}},
	)
	before := f.Tree()
	for _, c := range []Command{
		{Op: "bogus"},
		{Op: OpAssign, Name: "r1", Parent: "r2"},      // a loop
		{Op: OpAssign, Name: "nobody", Parent: "pg1"}, // unknown child
		{Op: OpAssign, Name: "r1", Parent: "nowhere"}, // unknown parent
		{Op: OpAssign, Name: "pg1", Parent: "r1"},     // the primary has no parent
		{Op: OpRemove, Name: "pg1"},                   // the primary stays
		{Op: OpSetState, Name: "r1", State: "sleepy"}, // unknown state
		{Op: OpAddStandby, Name: "r1"},                // kind clash
		{Op: OpRegisterRelay},                         // no name
	} {
		r := applyAll(t, f, c)[0]
		if r.Err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
	if r := f.Apply(&raft.Log{Type: raft.LogCommand, Data: []byte("{not json")}).(ApplyResult); r.Err == nil {
		t.Error("garbage entry accepted")
	}
	after := f.Tree()
	if after.Epoch != before.Epoch || after.Nodes["r1"].Parent != "pg1" {
		t.Errorf("rejected commands changed the tree: epoch %d -> %d", before.Epoch, after.Epoch)
	}
}

func TestFSMNewPrimaryFencesOld(t *testing.T) {
	f := NewFSM()
	applyAll(t, f,
		Command{Op: OpSetPrimary, Name: "pg1", Timeline: 1},
		Command{Op: OpAddStandby, Name: "pg2", Promotable: true},
		Command{Op: OpSetPrimary, Name: "pg2", Timeline: 2},
	)
	tree := f.Tree()
	if tree.Primary != "pg2" || tree.Timeline != 2 || tree.Nodes["pg1"].State != StateFenced || tree.Nodes["pg2"].Kind != KindPrimary {
		t.Fatalf("after failover: %+v pg1=%+v", tree, tree.Nodes["pg1"])
	}
	if r := applyAll(t, f, Command{Op: OpAssign, Name: "pg2", Parent: "pg1"})[0]; r.Err == nil {
		t.Error("assigned under a fenced node")
	}
}

type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (m *memSink) ID() string    { return "mem" }
func (m *memSink) Cancel() error { m.cancelled = true; return nil }
func (m *memSink) Close() error  { return nil }

func TestFSMSnapshotRestore(t *testing.T) {
	f := NewFSM()
	applyAll(t, f,
		Command{Op: OpSetPrimary, Name: "pg1", Timeline: 3},
		Command{Op: OpRegisterRelay, Name: "r1", Zone: "z"},
		Command{Op: OpAssign, Name: "r1", Parent: "pg1", Pinned: true},
	)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	var sink memSink
	if err := snap.Persist(&sink); err != nil {
		t.Fatal(err)
	}
	g := NewFSM()
	if err := g.Restore(io.NopCloser(&sink)); err != nil {
		t.Fatal(err)
	}
	a, b := f.Tree(), g.Tree()
	if a.Epoch != b.Epoch || a.Timeline != b.Timeline || *a.Nodes["r1"] != *b.Nodes["r1"] || !b.Nodes["r1"].Pinned {
		t.Fatalf("restored %+v, want %+v", b, a)
	}
	if err := g.Restore(io.NopCloser(strings.NewReader("nope"))); err == nil {
		t.Error("garbage snapshot restored")
	}
}
