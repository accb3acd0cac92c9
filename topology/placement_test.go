package topology

import (
	"fmt"
	"reflect"
	"testing"
)

// tree builds a tree from compact specs: "name:kind:zone:tier:parent:state".
func tree(primary string, specs ...string) *Tree {
	t := &Tree{Primary: primary, Nodes: map[string]*Node{}}
	for _, s := range specs {
		var name, kind, zone, tier, parent, state string
		parts := splitN(s, 6)
		name, kind, zone, tier, parent, state = parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]
		if state == "" {
			state = string(StateAlive)
		}
		t.Nodes[name] = &Node{Name: name, Kind: Kind(kind), Zone: zone, Tier: Tier(tier), Parent: parent, State: State(state)}
	}
	return t
}

func splitN(s string, n int) []string {
	out := make([]string, n)
	i := 0
	for _, c := range s {
		if c == ':' {
			i++
			continue
		}
		out[i] += string(c)
	}
	return out
}

func TestPlace(t *testing.T) {
	tests := []struct {
		name   string
		tree   *Tree
		policy Policy
		want   map[string]string
	}{
		{
			name: "relays under the primary, standbys under relays, by zone",
			tree: tree("pg", "pg:primary::::", "r1:relay:a:::", "r2:relay:b:::", "sa:standby:a:default::", "sb:standby:b:default::"),
			want: map[string]string{"r1": "pg", "r2": "pg", "sa": "r1", "sb": "r2"},
		},
		{
			name: "no relays: standbys stream from the primary",
			tree: tree("pg", "pg:primary::::", "s1:standby::::"),
			want: map[string]string{"s1": "pg"},
		},
		{
			name: "healthy assignments stay; only the failed relay's children move",
			tree: tree("pg", "pg:primary::::", "r1:relay:a::pg:", "r2:relay:a::pg:failed", "r3:relay:a::pg:",
				"s1:standby:a::r1:", "s2:standby:a::r2:", "s3:standby:a::r2:", "s4:standby:a::r3:"),
			want: map[string]string{"s2": "r1", "s3": "r3"},
		},
		{
			name:   "fan-out limit spills to the next relay, then a second tier",
			tree:   tree("pg", "pg:primary::::", "r1:relay::::", "s1:standby::::", "s2:standby::::", "s3:standby::::"),
			policy: Policy{MaxChildren: 2},
			want:   map[string]string{"r1": "pg", "s1": "r1", "s2": "r1", "s3": "pg"},
		},
		{
			name: "no zones: high tier goes to the least loaded relay",
			tree: tree("pg", "pg:primary::::", "r1:relay:::pg:", "r2:relay:::pg:",
				"x1:standby:::r1:", "x2:standby:::r1:", "h:standby::high::"),
			want: map[string]string{"h": "r2"},
		},
		{
			name: "no zones: relays stay shallow",
			tree: tree("pg", "pg:primary::::", "r1:relay:::pg:", "r2:relay:::r1:", "r3:relay::::"),
			want: map[string]string{"r3": "pg"},
		},
		{
			name:   "depth bound keeps relays shallow",
			tree:   tree("pg", "pg:primary::::", "r1:relay::::", "r2:relay::::"),
			policy: Policy{MaxChildren: 1, MaxDepth: 1},
			want:   map[string]string{"r1": "pg", "r2": "pg"},
		},
		{
			name: "dead primary: nothing is placed",
			tree: tree("pg", "pg:primary::::failed", "s1:standby::::"),
			want: nil,
		},
	}
	for _, tt := range tests {
		got := Place(tt.tree, tt.policy)
		if len(got) == 0 && len(tt.want) == 0 {
			continue
		}
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s:\n got  %v\n want %v", tt.name, got, tt.want)
		}
	}
}

// Zones: a region's standbys stay on its relays, a remote region is fed by
// a relay rather than by the primary, and a dead relay's children stay in
// the region when they can. The primary pg is in zone a throughout unless
// a case says otherwise.
func TestPlaceZones(t *testing.T) {
	tests := []struct {
		name   string
		tree   *Tree
		policy Policy
		want   map[string]string
	}{
		{
			name: "standbys of every tier stay on their region's relay though it has more children",
			tree: tree("pg", "pg:primary:a:::", "ra:relay:a::pg:", "rb:relay:b::ra:",
				"x1:standby:b::rb:", "x2:standby:b::rb:", "x3:standby:b::rb:",
				"h:standby:b:high::", "d:standby:b:default::", "bt:standby:b:batch::"),
			want: map[string]string{"h": "rb", "d": "rb", "bt": "rb"},
		},
		{
			name: "high tier in the primary's region stays there",
			tree: tree("pg", "pg:primary:a:::", "r1:relay:a::pg:", "r2:relay:b::r1:",
				"x1:standby:a::r1:", "x2:standby:a::r1:", "h:standby:a:high::"),
			want: map[string]string{"h": "r1"},
		},
		{
			name:   "a full region relay spills to another region, not to the primary",
			tree:   tree("pg", "pg:primary:a:::", "ra:relay:a::pg:", "rb:relay:b::ra:", "x1:standby:b::rb:", "x2:standby:b::rb:", "s:standby:b:high::"),
			policy: Policy{MaxChildren: 2},
			want:   map[string]string{"s": "ra"},
		},
		{
			name: "the region's relay dies: its children go to the region's other relay",
			tree: tree("pg", "pg:primary:a:::", "ra:relay:a::pg:", "rb1:relay:b::ra:failed", "rb2:relay:b::rb1:",
				"x1:standby:b::rb2:", "x2:standby:b::rb2:", "s1:standby:b:high:rb1:", "s2:standby:b::rb1:"),
			want: map[string]string{"rb2": "ra", "s1": "rb2", "s2": "rb2"},
		},
		{
			name: "the region's relays are all dead: across to another region's relay",
			tree: tree("pg", "pg:primary:a:::", "ra:relay:a::pg:", "rb1:relay:b::ra:failed", "rb2:relay:b::rb1:failed",
				"s1:standby:b::rb1:", "s2:standby:b::rb2:"),
			want: map[string]string{"s1": "ra", "s2": "ra"},
		},
		{
			name: "no relay is alive: the primary",
			tree: tree("pg", "pg:primary:a:::", "ra:relay:a::pg:failed", "rb1:relay:b::ra:failed", "s1:standby:b::rb1:"),
			want: map[string]string{"s1": "pg"},
		},
		{
			name: "remote relays go below a relay, their region's first",
			tree: tree("pg", "pg:primary:a:::", "ra:relay:a:::", "rb1:relay:b:::", "rb2:relay:b:::"),
			want: map[string]string{"ra": "pg", "rb1": "ra", "rb2": "rb1"},
		},
		{
			name: "the primary's region is placed first whatever the names",
			tree: tree("pg", "pg:primary:a:::", "b1:relay:b:::", "za:relay:a:::"),
			want: map[string]string{"za": "pg", "b1": "za"},
		},
		{
			name: "a remote relay takes its region's relay over a shallower one",
			tree: tree("pg", "pg:primary:a:::", "ra:relay:a::pg:", "rb1:relay:b::ra:", "rb2:relay:b::rb1:", "rb3:relay:b:::"),
			want: map[string]string{"rb3": "rb1"},
		},
		{
			name: "no relay in its region: the primary's region's relay, then any relay",
			tree: tree("pg", "pg:primary:a:::", "b1:relay:b::pg:", "za:relay:a::pg:", "c1:relay:c:::"),
			want: map[string]string{"c1": "za"},
		},
		{
			name: "no relay in its or the primary's region: any relay before the primary",
			tree: tree("pg", "pg:primary:a:::", "b1:relay:b::pg:", "c1:relay:c:::"),
			want: map[string]string{"c1": "b1"},
		},
		{
			name:   "the depth bound sends a remote relay to the primary",
			tree:   tree("pg", "pg:primary:a:::", "ra:relay:a::pg:", "rb:relay:b:::"),
			policy: Policy{MaxDepth: 1},
			want:   map[string]string{"rb": "pg"},
		},
		{
			name:   "the fan-out bound sends a remote relay to the primary",
			tree:   tree("pg", "pg:primary:a:::", "ra:relay:a::pg:", "x:standby:a::ra:", "rb:relay:b:::"),
			policy: Policy{MaxChildren: 1},
			want:   map[string]string{"rb": "pg"},
		},
		{
			name: "relays in the primary's region and relays without a zone stay shallow",
			tree: tree("pg", "pg:primary:a:::", "rb:relay:b::pg:", "r0:relay:::rb:", "ra2:relay:a:::", "rn:relay::::"),
			want: map[string]string{"ra2": "pg", "rn": "pg"},
		},
		{
			name: "a primary without a zone: no relay is remote",
			tree: tree("pg", "pg:primary::::", "ra:relay:a:::", "rb1:relay:b:::", "rb2:relay:b:::", "sb:standby:b:::"),
			want: map[string]string{"ra": "pg", "rb1": "pg", "rb2": "pg", "sb": "rb1"},
		},
	}
	for _, tt := range tests {
		got := Place(tt.tree, tt.policy)
		if !reflect.DeepEqual(got, tt.want) {
			t.Errorf("%s:\n got  %v\n want %v", tt.name, got, tt.want)
		}
	}
}

// The e2e zone scenario as a script: each step changes states, places, and
// checks every node's parent afterwards.
func TestPlaceZoneScenario(t *testing.T) {
	tr := tree("pg", "pg:primary:a:::", "ra:relay:a:::", "rb1:relay:b:::", "rb2:relay:b:::",
		"sb1:standby:b:high::", "sb2:standby:b:::")
	steps := []struct {
		what   string
		states map[string]State
		want   map[string]string // every non-primary node's parent
	}{
		{"start", nil, map[string]string{"ra": "pg", "rb1": "ra", "rb2": "rb1", "sb1": "rb2", "sb2": "rb1"}},
		{"rb1 dies", map[string]State{"rb1": StateFailed},
			map[string]string{"ra": "pg", "rb1": "ra", "rb2": "ra", "sb1": "rb2", "sb2": "rb2"}},
		{"rb2 dies too", map[string]State{"rb2": StateFailed},
			map[string]string{"ra": "pg", "rb1": "ra", "rb2": "ra", "sb1": "ra", "sb2": "ra"}},
		{"rb1 is back: nothing moves", map[string]State{"rb1": StateAlive},
			map[string]string{"ra": "pg", "rb1": "ra", "rb2": "ra", "sb1": "ra", "sb2": "ra"}},
		{"ra dies: rb1 to the primary, the standbys to rb1", map[string]State{"ra": StateFailed},
			map[string]string{"ra": "pg", "rb1": "pg", "rb2": "ra", "sb1": "rb1", "sb2": "rb1"}},
	}
	for _, st := range steps {
		for name, s := range st.states {
			tr.Nodes[name].State = s
		}
		for child, parent := range Place(tr, Policy{}) {
			tr.Nodes[child].Parent = parent
		}
		got := map[string]string{}
		for _, name := range tr.Names() {
			if name != tr.Primary {
				got[name] = tr.Nodes[name].Parent
			}
		}
		if !reflect.DeepEqual(got, st.want) {
			t.Fatalf("%s:\n got  %v\n want %v", st.what, got, st.want)
		}
	}
}

// Placement is deterministic and never produces a loop or exceeds the
// fan-out, on many generated trees.
func TestPlaceProperties(t *testing.T) {
	for seed := 0; seed < 200; seed++ {
		specs := []string{fmt.Sprintf("pg:primary:%s:::", []string{"", "z0", "z1"}[seed%3])}
		nRelays, nStandbys := seed%5, seed%17
		for i := 0; i < nRelays; i++ {
			state := ""
			if (seed+i)%4 == 0 {
				state = "failed"
			}
			specs = append(specs, fmt.Sprintf("r%d:relay:z%d:::%s", i, (seed+i)%3, state))
		}
		for i := 0; i < nStandbys; i++ {
			specs = append(specs, fmt.Sprintf("s%d:standby:z%d:%s::", i, (seed*i)%3, []string{"high", "default", "batch"}[i%3]))
		}
		tr := tree("pg", specs...)
		p := Policy{MaxChildren: 3, MaxDepth: 2}
		a, b := Place(tr, p), Place(tr, p)
		if !reflect.DeepEqual(a, b) {
			t.Fatalf("seed %d: not deterministic", seed)
		}
		for child, parent := range a {
			tr.Nodes[child].Parent = parent
		}
		if err := checkAcyclic(tr); err != nil {
			t.Fatalf("seed %d: %v", seed, err)
		}
		for _, name := range tr.Names() {
			n := tr.Nodes[name]
			if n.Kind == KindRelay && n.State == StateAlive && len(tr.Children(name)) > p.MaxChildren {
				t.Fatalf("seed %d: relay %s has %d children", seed, name, len(tr.Children(name)))
			}
			if d := relaysAbove(tr, name); n.State == StateAlive && d > p.MaxDepth {
				t.Fatalf("seed %d: %s is below %d relays", seed, name, d)
			}
			if n.State == StateAlive && n.Kind != KindPrimary && n.Parent == "" {
				t.Fatalf("seed %d: %s left unplaced", seed, name)
			}
			if n.State == StateAlive && n.Parent != "" && tr.Nodes[n.Parent].State != StateAlive {
				t.Fatalf("seed %d: %s under dead %s", seed, name, n.Parent)
			}
		}
	}
}

// relaysAbove counts the relays between the primary and name.
func relaysAbove(t *Tree, name string) int {
	d := 0
	for cur := t.Nodes[name].Parent; cur != "" && cur != t.Primary; cur = t.Nodes[cur].Parent {
		d++
	}
	return d
}
