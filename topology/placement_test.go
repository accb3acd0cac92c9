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
			name: "high tier goes to the least loaded relay even across zones",
			tree: tree("pg", "pg:primary::::", "r1:relay:a::pg:", "r2:relay:b::pg:",
				"x1:standby:a::r1:", "x2:standby:a::r1:", "h:standby:a:high::"),
			want: map[string]string{"h": "r2"},
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

// Placement is deterministic and never produces a loop or exceeds the
// fan-out, on many generated trees.
func TestPlaceProperties(t *testing.T) {
	for seed := 0; seed < 200; seed++ {
		specs := []string{"pg:primary::::"}
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
			if n.State == StateAlive && n.Kind != KindPrimary && n.Parent == "" {
				t.Fatalf("seed %d: %s left unplaced", seed, name)
			}
			if n.State == StateAlive && n.Parent != "" && tr.Nodes[n.Parent].State != StateAlive {
				t.Fatalf("seed %d: %s under dead %s", seed, name, n.Parent)
			}
		}
	}
}
