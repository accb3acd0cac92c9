// Package failover follows and drives primary failover for the manager
// cluster: it decides that the primary is down (the managers' view and the
// first-tier relays' agree), picks the most advanced promotable standby,
// catches it up from the relay tier, promotes it, commits the new primary
// and timeline to the Raft log (fencing the old one) and lets placement
// re-parent the tree. It also follows a promotion done by someone else,
// and runs planned switchovers.
package failover

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/walrelay/walrelay/topology"
	"github.com/walrelay/walrelay/walstream"
)

// freshness bounds how old a report or reading may be to count.
const freshness = 5 * time.Second

// detect tells whether the primary is down: the managers have not read it
// for timeout AND a majority of the first-tier relays (those assigned to
// it) that still report say their stream from it is lost. A relay that
// does not report has no vote (it may be down itself); with no reporting
// first-tier relay the managers' view decides alone.
func detect(tree *topology.Tree, now, primarySeen time.Time, reports map[string]topology.RelayObservation, timeout time.Duration) (bool, string) {
	if tree.Primary == "" {
		return false, "no primary registered"
	}
	if silent := now.Sub(primarySeen); silent <= timeout {
		return false, "the primary answers"
	}
	var tier, lost int
	for _, name := range tree.Children(tree.Primary) {
		n := tree.Nodes[name]
		if n.Kind != topology.KindRelay || n.State != topology.StateAlive {
			continue
		}
		r, ok := reports[name]
		if !ok || now.Sub(r.At) >= freshness {
			continue
		}
		tier++
		if !r.Report.Streaming {
			lost++
		}
	}
	if tier > 0 && lost*2 <= tier {
		return false, fmt.Sprintf("the managers cannot reach the primary, but %d of %d first-tier relays still stream from it", tier-lost, tier)
	}
	return true, fmt.Sprintf("no answer from the primary for %s and %d of %d first-tier relays lost their stream", now.Sub(primarySeen).Round(time.Millisecond), lost, tier)
}

// candidate is a promotable standby as the leader last read it.
type candidate struct {
	name string
	obs  topology.Observation
}

// candidates are the alive standbys marked promotable (or named in the
// primary's synchronous_standby_names) that the leader read recently, in
// recovery on the primary's timeline, most advanced first.
func candidates(tree *topology.Tree, now time.Time, observed func(string) (topology.Observation, bool)) []candidate {
	var sync map[string]bool
	if o, ok := observed(tree.Primary); ok {
		sync = syncNames(o.SyncStandbyNames)
	}
	var out []candidate
	for _, name := range tree.Names() {
		n := tree.Nodes[name]
		if n.Kind != topology.KindStandby || !(n.Promotable || sync[name]) || n.State != topology.StateAlive {
			continue
		}
		o, ok := observed(name)
		if !ok || o.Err != nil || !o.InRecovery || now.Sub(o.At) > freshness {
			continue
		}
		if tree.Timeline != 0 && o.Timeline != 0 && o.Timeline != tree.Timeline {
			continue
		}
		out = append(out, candidate{name, o})
	}
	sort.SliceStable(out, func(i, j int) bool { return position(out[i].obs) > position(out[j].obs) })
	return out
}

func position(o topology.Observation) walstream.LSN {
	if o.ReceiveLSN > o.ReplayLSN {
		return o.ReceiveLSN
	}
	return o.ReplayLSN
}

// furthest is the largest position held anywhere in the managed tree on
// the primary's timeline, and the relay that holds it ("" when a standby
// holds the most, or nobody reported).
func furthest(tree *topology.Tree, now time.Time, reports map[string]topology.RelayObservation, observed func(string) (topology.Observation, bool)) (walstream.LSN, string) {
	var best walstream.LSN
	holder := ""
	for _, name := range tree.Names() {
		n := tree.Nodes[name]
		switch n.Kind {
		case topology.KindRelay:
			r, ok := reports[name]
			if !ok || n.State != topology.StateAlive || now.Sub(r.At) > freshness {
				continue
			}
			if tree.Timeline != 0 && r.Report.Timeline != tree.Timeline {
				continue
			}
			if r.Report.ReceiveLSN > best {
				best, holder = r.Report.ReceiveLSN, name
			}
		case topology.KindStandby:
			o, ok := observed(name)
			if !ok || o.Err != nil || !o.InRecovery || n.State != topology.StateAlive {
				continue
			}
			if p := position(o); p > best {
				best, holder = p, ""
			}
		}
	}
	return best, holder
}

// syncNames lists the standby names in a synchronous_standby_names value
// ("s1, s2", "FIRST 2 (s1, s2)", "ANY 1 (\"s 1\", s2)"). The wildcard
// names nobody in particular and is left out.
func syncNames(v string) map[string]bool {
	out := map[string]bool{}
	var tok strings.Builder
	quoted := false
	flush := func() {
		t := tok.String()
		tok.Reset()
		if t == "" || t == "*" {
			return
		}
		if !quoted {
			if u := strings.ToUpper(t); u == "FIRST" || u == "ANY" {
				return
			}
			if _, err := strconv.Atoi(t); err == nil {
				return
			}
			t = strings.ToLower(t)
		}
		out[t] = true
	}
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c == '"':
			if quoted && i+1 < len(v) && v[i+1] == '"' {
				tok.WriteByte('"')
				i++
				continue
			}
			if quoted {
				flush()
			}
			quoted = !quoted
		case quoted:
			tok.WriteByte(c)
		case c == ',' || c == '(' || c == ')' || c == ' ' || c == '\t':
			flush()
		default:
			tok.WriteByte(c)
		}
	}
	flush()
	return out
}
