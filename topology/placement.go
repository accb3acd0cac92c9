package topology

import (
	"sort"
)

// Policy bounds the tree placement builds.
type Policy struct {
	// MaxChildren is the most children a relay gets. Default 8.
	MaxChildren int
	// MaxDepth is the most relays between the primary and any node.
	// Default 3.
	MaxDepth int
}

func (p Policy) withDefaults() Policy {
	if p.MaxChildren <= 0 {
		p.MaxChildren = 8
	}
	if p.MaxDepth <= 0 {
		p.MaxDepth = 3
	}
	return p
}

// Place decides parents for every alive node that has none or whose parent
// is not alive, and leaves every healthy assignment alone (the fewest
// moves). It is deterministic: the same tree gives the same answer on every
// manager. The result maps node -> new parent; nodes it cannot place yet
// (no alive primary) are left out.
func Place(t *Tree, p Policy) map[string]string {
	p = p.withDefaults()
	if pr, ok := t.Nodes[t.Primary]; !ok || pr.State != StateAlive {
		return nil
	}
	alive := func(name string) bool {
		n, ok := t.Nodes[name]
		return ok && n.State == StateAlive
	}
	parentOf := map[string]string{}
	children := map[string]int{}
	var todo []*Node
	for _, name := range t.Names() {
		n := t.Nodes[name]
		if n.Kind == KindPrimary || n.State != StateAlive || n.External {
			continue
		}
		if n.Parent != "" && alive(n.Parent) {
			parentOf[name] = n.Parent
			children[n.Parent]++
			continue
		}
		todo = append(todo, n)
	}
	// Relays first, so standbys can hang below them; then by name.
	sort.SliceStable(todo, func(i, j int) bool {
		return todo[i].Kind == KindRelay && todo[j].Kind != KindRelay
	})
	depth := func(name string) int { // relays between the primary and name's children
		d := 0
		for cur := name; cur != t.Primary && cur != ""; cur = parentOf[cur] {
			d++
			if d > len(t.Nodes) {
				return 1 << 30 // a loop: never a parent
			}
		}
		return d
	}
	descends := func(node, from string) bool { // is node below from?
		for cur := node; cur != ""; cur = parentOf[cur] {
			if cur == from {
				return true
			}
			if cur == t.Primary {
				return false
			}
		}
		return false
	}
	out := map[string]string{}
	for _, n := range todo {
		type cand struct {
			name           string
			zoneMiss       int
			kids, dpth     int
			primaryPenalty int
		}
		var cands []cand
		for _, name := range t.Names() {
			c := t.Nodes[name]
			if c.State != StateAlive || name == n.Name {
				continue
			}
			isPrimary := name == t.Primary
			if !isPrimary && c.Kind != KindRelay {
				continue
			}
			if !isPrimary && (children[name] >= p.MaxChildren || descends(name, n.Name) || (parentOf[name] == "" && name != t.Primary)) {
				continue
			}
			d := depth(name)
			if n.Kind == KindRelay && d >= p.MaxDepth {
				continue
			}
			zm := 0
			if n.Zone != "" && c.Zone != n.Zone {
				zm = 1
			}
			pp := 0
			if isPrimary && n.Kind == KindStandby {
				pp = 1 // standbys go to the primary only when no relay can take them
			}
			cands = append(cands, cand{name, zm, children[name], d, pp})
		}
		if len(cands) == 0 {
			continue
		}
		high := n.Tier == TierHigh
		sort.SliceStable(cands, func(i, j int) bool {
			a, b := cands[i], cands[j]
			if a.primaryPenalty != b.primaryPenalty {
				return a.primaryPenalty < b.primaryPenalty
			}
			if n.Kind == KindRelay && a.dpth != b.dpth {
				return a.dpth < b.dpth // keep the tree shallow
			}
			if high && a.kids != b.kids {
				return a.kids < b.kids
			}
			if a.zoneMiss != b.zoneMiss {
				return a.zoneMiss < b.zoneMiss
			}
			if a.kids != b.kids {
				return a.kids < b.kids
			}
			return a.name < b.name
		})
		best := cands[0].name
		out[n.Name] = best
		parentOf[n.Name] = best
		children[best]++
	}
	return out
}
