package topology

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/hashicorp/raft"
)

// Raft log entries as the FSM receives them: any sequence of commands,
// including malformed JSON, leaves a tree with no cycle, an epoch that grew
// by exactly the accepted commands, and a snapshot that restores to the
// same tree.
func FuzzFSMCommands(f *testing.F) {
	seq := func(cs ...Command) []byte {
		var b bytes.Buffer
		for _, c := range cs {
			b.Write(c.Encode())
			b.WriteByte('\n')
		}
		return b.Bytes()
	}
	f.Add(seq(Command{Op: OpSetPrimary, Name: "pg", Timeline: 1},
		Command{Op: OpRegisterRelay, Name: "r1"}, Command{Op: OpRegisterRelay, Name: "r2"},
		Command{Op: OpAssign, Assignments: map[string]string{"r1": "pg", "r2": "r1"}},
		Command{Op: OpAssign, Name: "r1", Parent: "r2", Pinned: true},
		Command{Op: OpAddStandby, Name: "s1", Tier: TierHigh},
		Command{Op: OpSetPrimary, Name: "s1", Timeline: 2},
		Command{Op: OpRemove, Name: "r2"}))
	f.Add([]byte(`{"op":"assign","name":"x","parent":"x"}` + "\n" + `{"op":` + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		fsm := NewFSM()
		var accepted uint64
		for i, line := range bytes.Split(data, []byte("\n")) {
			res := fsm.Apply(&raft.Log{Index: uint64(i + 1), Type: raft.LogCommand, Data: line}).(ApplyResult)
			if res.Err == nil {
				accepted++
			}
			tree := fsm.Tree()
			if tree.Epoch != accepted {
				t.Fatalf("epoch %d after %d accepted commands", tree.Epoch, accepted)
			}
			if err := checkAcyclic(tree); err != nil {
				t.Fatalf("accepted a cycle: %v", err)
			}
			if tree.Primary != "" && tree.Nodes[tree.Primary] != nil && tree.Nodes[tree.Primary].Kind != KindPrimary {
				t.Fatalf("primary %s is a %s", tree.Primary, tree.Nodes[tree.Primary].Kind)
			}
		}
		want, _ := json.Marshal(fsm.Tree())
		snap, _ := fsm.Snapshot()
		sink := &memSink{}
		if err := snap.Persist(sink); err != nil {
			t.Fatal(err)
		}
		restored := NewFSM()
		if err := restored.Restore(sink); err != nil {
			t.Fatal(err)
		}
		if got, _ := json.Marshal(restored.Tree()); !bytes.Equal(got, want) {
			t.Fatalf("snapshot round trip:\n%s\n%s", want, got)
		}
	})
}

// The manager API's JSON bodies decode into the types the handlers use, or
// fail; nothing panics on the way.
func FuzzAPIJSON(f *testing.F) {
	f.Add([]byte(`{"name":"r1","report":{"timeline":1,"receive_lsn":"0/3000000","streaming":true,"slots":["a"]}}`))
	f.Add([]byte(`{"id":"m2","raft_addr":"h:1","http_addr":"http://h:2"}`))
	f.Add([]byte(`{"receive_lsn":"zz/1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var hb HeartbeatRequest
		if json.Unmarshal(b, &hb) == nil && hb.Report != nil {
			o := newObserver()
			o.noteRelay(hb.Name, *hb.Report)
		}
		var j JoinRequest
		_ = json.Unmarshal(b, &j)
		var c Command
		if json.Unmarshal(b, &c) == nil {
			_ = apply(NewFSM().Tree(), c)
		}
		var st StatusResponse
		_ = json.Unmarshal(b, &st)
	})
}
