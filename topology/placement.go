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
//
// Among the parents a node may take (alive, below MaxChildren, within
// MaxDepth, not below the node itself), zones decide first:
//
//   - A standby, of any tier, goes to a relay in its own zone when one has
//     room, then to any relay, and to the primary only when no relay can
//     take it; among equals, the relay with the fewest children.
//   - A remote relay (its zone is set, the primary's zone is set and they
//     differ) goes under a relay in its own zone, else a relay in the
//     primary's zone, else any relay, and under the primary only when no
//     relay can take it: a region is fed once, over a compressed
//     relay-to-relay link, rather than straight from the primary. Among
//     equals, the shallowest, then the fewest children.
//   - Any other relay (no zone, in the primary's zone, or the primary has
//     no zone) goes as shallow as it can, then to its zone, then to the
//     fewest children.
//
// The primary's zone is the primary node's Zone (a promoted standby keeps
// the one it was registered with). When it is empty no relay counts as
// remote: the managers cannot tell which region is far, so relays are
// placed shallow as without zones.
func Place(t *Tree, p Policy) map[string]string {
	p = p.withDefaults()
	pr, ok := t.Nodes[t.Primary]
	if !ok || pr.State != StateAlive {
		return nil
	}
	remote := func(n *Node) bool {
		return n.Kind == KindRelay && n.Zone != "" && pr.Zone != "" && n.Zone != pr.Zone
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
	// Relays first, so standbys can hang below them, and the primary's
	// region before remote ones, so those can hang below it; then by name.
	order := func(n *Node) int {
		switch {
		case n.Kind != KindRelay:
			return 2
		case remote(n):
			return 1
		}
		return 0
	}
	sort.SliceStable(todo, func(i, j int) bool { return order(todo[i]) < order(todo[j]) })
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
			if !isPrimary && (children[name] >= p.MaxChildren || descends(name, n.Name) || parentOf[name] == "") {
				continue
			}
			d := depth(name)
			if n.Kind == KindRelay && d >= p.MaxDepth {
				continue
			}
			cands = append(cands, cand{name, rank(n, c, pr, remote(n), d, children[name])})
		}
		if len(cands) == 0 {
			continue
		}
		sort.Slice(cands, func(i, j int) bool { return cands[i].less(cands[j]) })
		best := cands[0].name
		out[n.Name] = best
		parentOf[n.Name] = best
		children[best]++
	}
	return out
}

// cand is a possible parent: the lowest key wins, then the lowest name.
type cand struct {
	name string
	key  [3]int
}

func (a cand) less(b cand) bool {
	for i := range a.key {
		if a.key[i] != b.key[i] {
			return a.key[i] < b.key[i]
		}
	}
	return a.name < b.name
}

// rank keys candidate parent c (the primary pr or a placed relay, depth
// relays deep, with kids children) for node n, as Place describes.
func rank(n, c, pr *Node, remote bool, depth, kids int) [3]int {
	isPrimary := c == pr
	zoneMiss := 0
	if n.Zone != "" && c.Zone != n.Zone {
		zoneMiss = 1
	}
	switch {
	case n.Kind != KindRelay:
		primary := 0
		if isPrimary {
			primary = 1
		}
		return [3]int{primary, zoneMiss, kids}
	case remote:
		var class int
		switch {
		case isPrimary:
			class = 3
		case c.Zone == n.Zone:
			class = 0
		case c.Zone == pr.Zone:
			class = 1
		default:
			class = 2
		}
		return [3]int{class, depth, kids}
	}
	return [3]int{depth, zoneMiss, kids}
}
