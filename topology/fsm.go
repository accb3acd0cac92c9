package topology

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"sync"

	"github.com/hashicorp/raft"
)

// Kind is a node's role in the tree.
type Kind string

const (
	KindPrimary Kind = "primary"
	KindRelay   Kind = "relay"
	KindStandby Kind = "standby"
)

// State is a node's health as the managers last decided it.
type State string

const (
	StateAlive  State = "alive"
	StateFailed State = "failed"
	StateFenced State = "fenced"
)

// Tier orders standbys for placement: high-tier standbys go to the least
// loaded relays; batch ones fill up the rest.
type Tier string

const (
	TierHigh    Tier = "high"
	TierDefault Tier = "default"
	TierBatch   Tier = "batch"
)

// Node is one member of the replication tree.
type Node struct {
	Name       string `json:"name"`
	Kind       Kind   `json:"kind"`
	Conninfo   string `json:"conninfo,omitempty"`
	Zone       string `json:"zone,omitempty"`
	Tier       Tier   `json:"tier,omitempty"`
	State      State  `json:"state"`
	Parent     string `json:"parent,omitempty"` // assigned upstream; "" for the primary
	Promotable bool   `json:"promotable,omitempty"`
	// External nodes stream as another HA manager (Patroni) says: the
	// managers observe them and follow their promotions, but never place
	// or re-point them.
	External bool `json:"external,omitempty"`
	// Pinned parents were set by an operator (walrelay move) and are kept
	// by placement while the parent is alive.
	Pinned bool `json:"pinned,omitempty"`
}

// Tree is the FSM's state.
type Tree struct {
	Epoch    uint64           `json:"epoch"`
	Primary  string           `json:"primary,omitempty"`
	Timeline uint32           `json:"timeline,omitempty"`
	Nodes    map[string]*Node `json:"nodes"`
	// Managers maps each manager's Raft server ID to its HTTP address, so
	// any member can forward writes to the leader.
	Managers map[string]string `json:"managers,omitempty"`
}

// Clone returns a deep copy.
func (t *Tree) Clone() *Tree {
	c := &Tree{Epoch: t.Epoch, Primary: t.Primary, Timeline: t.Timeline, Nodes: make(map[string]*Node, len(t.Nodes)),
		Managers: make(map[string]string, len(t.Managers))}
	for k, v := range t.Managers {
		c.Managers[k] = v
	}
	for k, n := range t.Nodes {
		nn := *n
		c.Nodes[k] = &nn
	}
	return c
}

// Names returns the node names in order.
func (t *Tree) Names() []string {
	names := make([]string, 0, len(t.Nodes))
	for n := range t.Nodes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// Children returns the names of nodes assigned to parent, in order.
func (t *Tree) Children(parent string) []string {
	var out []string
	for _, name := range t.Names() {
		if t.Nodes[name].Parent == parent && name != parent {
			out = append(out, name)
		}
	}
	return out
}

// Op names a Command.
type Op string

const (
	OpSetPrimary    Op = "set_primary"    // Name, Conninfo, Timeline
	OpRegisterRelay Op = "register_relay" // Name, Conninfo, Zone
	OpAddStandby    Op = "add_standby"    // Name, Conninfo, Zone, Tier, Promotable
	OpRemove        Op = "remove"         // Name
	OpSetState      Op = "set_state"      // Name, State
	OpAssign        Op = "assign"         // Assignments and Was (placement), or Name+Parent+Pinned (move)
	OpManager       Op = "manager"        // Name (Raft server ID), Conninfo (HTTP address); empty Conninfo removes
)

// Command is one Raft log entry.
type Command struct {
	Op          Op                `json:"op"`
	Name        string            `json:"name,omitempty"`
	Conninfo    string            `json:"conninfo,omitempty"`
	Zone        string            `json:"zone,omitempty"`
	Tier        Tier              `json:"tier,omitempty"`
	Promotable  bool              `json:"promotable,omitempty"`
	External    bool              `json:"external,omitempty"`
	State       State             `json:"state,omitempty"`
	Parent      string            `json:"parent,omitempty"`
	Pinned      bool              `json:"pinned,omitempty"`
	Timeline    uint32            `json:"timeline,omitempty"`
	Assignments map[string]string `json:"assignments,omitempty"`
	// Was holds, for placement, the parent each assigned node had in the
	// tree the placement was computed from ("" for none). A node whose
	// parent has changed since (an operator's move committed in between)
	// is left as it now is: the placement was for a tree that is gone.
	// Entries written before it existed have none and apply as they are.
	Was map[string]string `json:"was,omitempty"`
}

// Encode is the log entry's bytes.
func (c Command) Encode() []byte {
	b, _ := json.Marshal(c)
	return b
}

// ApplyResult is what Apply returns through raft.ApplyFuture.Response.
type ApplyResult struct {
	Epoch uint64
	Err   error
}

// FSM is the Raft state machine of the tree. Reads take a consistent copy.
type FSM struct {
	mu      sync.RWMutex
	tree    *Tree
	changed chan struct{} // closed and replaced on every new epoch
}

var _ raft.FSM = (*FSM)(nil)

// NewFSM returns an empty tree at epoch 0.
func NewFSM() *FSM {
	return &FSM{tree: &Tree{Nodes: make(map[string]*Node), Managers: map[string]string{}}, changed: make(chan struct{})}
}

// Changed returns a channel closed when the tree next changes.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

func (f *FSM) notify() {
	close(f.changed)
	f.changed = make(chan struct{})
}

// Tree returns a copy of the current tree.
func (f *FSM) Tree() *Tree {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.tree.Clone()
}

// Apply applies one committed log entry. Invalid commands change nothing
// (the epoch stays) and return the error in the ApplyResult: every member
// rejects them the same way, so replicas never diverge.
func (f *FSM) Apply(l *raft.Log) any {
	if l.Type != raft.LogCommand {
		return ApplyResult{}
	}
	var c Command
	if err := json.Unmarshal(l.Data, &c); err != nil {
		return ApplyResult{Err: fmt.Errorf("decode command at index %d: %w", l.Index, err)}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	next := f.tree.Clone()
	if err := apply(next, c); err != nil {
		return ApplyResult{Epoch: f.tree.Epoch, Err: err}
	}
	next.Epoch = f.tree.Epoch + 1
	f.tree = next
	f.notify()
	return ApplyResult{Epoch: next.Epoch}
}

// apply changes t according to c, or returns why it cannot.
func apply(t *Tree, c Command) error {
	switch c.Op {
	case OpSetPrimary:
		if c.Name == "" {
			return errors.New("set_primary: empty name")
		}
		if old, ok := t.Nodes[t.Primary]; ok && t.Primary != c.Name {
			// The old primary is fenced: nothing may follow it again.
			old.State, old.Kind = StateFenced, KindStandby
		}
		n := upsert(t, c.Name, KindPrimary)
		n.Conninfo, n.State, n.Parent, n.Pinned = c.Conninfo, StateAlive, "", false
		n.External = n.External || c.External
		if c.Zone != "" {
			// Only when given: a promotion keeps the standby's own zone.
			n.Zone = c.Zone
		}
		t.Primary = c.Name
		if c.Timeline != 0 {
			t.Timeline = c.Timeline
		}
	case OpRegisterRelay:
		if c.Name == "" {
			return errors.New("register_relay: empty name")
		}
		if n, ok := t.Nodes[c.Name]; ok && n.Kind != KindRelay {
			return fmt.Errorf("register_relay: %q is already a %s", c.Name, n.Kind)
		}
		n := upsert(t, c.Name, KindRelay)
		n.Conninfo, n.Zone, n.State = c.Conninfo, c.Zone, StateAlive
	case OpAddStandby:
		if c.Name == "" {
			return errors.New("add_standby: empty name")
		}
		if n, ok := t.Nodes[c.Name]; ok && n.Kind != KindStandby {
			return fmt.Errorf("add_standby: %q is already a %s", c.Name, n.Kind)
		}
		n := upsert(t, c.Name, KindStandby)
		n.Conninfo, n.Zone, n.Promotable, n.State = c.Conninfo, c.Zone, c.Promotable, StateAlive
		n.External = c.External
		if n.External {
			n.Parent, n.Pinned = "", false
		}
		n.Tier = c.Tier
		if n.Tier == "" {
			n.Tier = TierDefault
		}
	case OpRemove:
		if _, ok := t.Nodes[c.Name]; !ok {
			return fmt.Errorf("remove: no node %q", c.Name)
		}
		if c.Name == t.Primary {
			return fmt.Errorf("remove: %q is the primary", c.Name)
		}
		delete(t.Nodes, c.Name)
		for _, n := range t.Nodes {
			if n.Parent == c.Name {
				n.Parent, n.Pinned = "", false
			}
		}
	case OpSetState:
		n, ok := t.Nodes[c.Name]
		if !ok {
			return fmt.Errorf("set_state: no node %q", c.Name)
		}
		switch c.State {
		case StateAlive, StateFailed, StateFenced:
		default:
			return fmt.Errorf("set_state: unknown state %q", c.State)
		}
		n.State = c.State
	case OpAssign:
		if c.Name != "" {
			if c.Assignments == nil {
				c.Assignments = map[string]string{}
			}
			c.Assignments[c.Name] = c.Parent
		}
		if c.Was != nil {
			fresh := make(map[string]string, len(c.Assignments))
			for child, parent := range c.Assignments {
				if n, ok := t.Nodes[child]; !ok || n.Parent == c.Was[child] {
					fresh[child] = parent
				}
			}
			c.Assignments = fresh
		}
		for child, parent := range c.Assignments {
			if err := checkAssign(t, child, parent); err != nil {
				return err
			}
		}
		for child, parent := range c.Assignments {
			n := t.Nodes[child]
			n.Parent = parent
			n.Pinned = c.Name != "" && c.Pinned
		}
		if err := checkAcyclic(t); err != nil {
			return err
		}
	case OpManager:
		if c.Name == "" {
			return errors.New("manager: empty id")
		}
		if c.Conninfo == "" {
			delete(t.Managers, c.Name)
		} else {
			t.Managers[c.Name] = c.Conninfo
		}
	default:
		return fmt.Errorf("unknown op %q", c.Op)
	}
	return nil
}

func upsert(t *Tree, name string, kind Kind) *Node {
	n, ok := t.Nodes[name]
	if !ok {
		n = &Node{Name: name}
		t.Nodes[name] = n
	}
	n.Kind = kind
	return n
}

func checkAssign(t *Tree, child, parent string) error {
	c, ok := t.Nodes[child]
	if !ok {
		return fmt.Errorf("assign: no node %q", child)
	}
	if c.Kind == KindPrimary {
		return fmt.Errorf("assign: %q is the primary", child)
	}
	p, ok := t.Nodes[parent]
	if !ok {
		return fmt.Errorf("assign: no parent %q", parent)
	}
	if p.Kind == KindStandby && p.Name != t.Primary {
		// A standby can feed a relay (cascading), but managed placement
		// only hangs nodes off the primary and relays.
		return fmt.Errorf("assign: parent %q is a standby", parent)
	}
	if p.State == StateFenced {
		return fmt.Errorf("assign: parent %q is fenced", parent)
	}
	return nil
}

// checkAcyclic makes sure every chain of parents ends at the primary (or an
// unassigned node) without a loop.
func checkAcyclic(t *Tree) error {
	for _, name := range t.Names() {
		seen := map[string]bool{}
		for cur := name; cur != ""; cur = t.Nodes[cur].Parent {
			if seen[cur] {
				return fmt.Errorf("assign: %q would stream from itself through %v", name, cur)
			}
			seen[cur] = true
			if _, ok := t.Nodes[cur]; !ok {
				break
			}
		}
	}
	return nil
}

// Snapshot captures the tree for Raft's log compaction.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	return &snapshot{tree: f.Tree()}, nil
}

// Restore replaces the tree with a snapshot's.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	var t Tree
	if err := json.NewDecoder(rc).Decode(&t); err != nil {
		return fmt.Errorf("restore topology snapshot: %w", err)
	}
	if t.Nodes == nil {
		t.Nodes = make(map[string]*Node)
	}
	if t.Managers == nil {
		t.Managers = map[string]string{}
	}
	f.mu.Lock()
	f.tree = &t
	f.notify()
	f.mu.Unlock()
	return nil
}

type snapshot struct{ tree *Tree }

func (s *snapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode(s.tree); err != nil {
		sink.Cancel()
		return fmt.Errorf("persist topology snapshot: %w", err)
	}
	return sink.Close()
}

func (s *snapshot) Release() {}
