package relay

import (
	"strings"

	"github.com/walrelay/walrelay/walstream"
)

// FeedbackPolicy decides whose hot standby feedback the relay forwards
// upstream: "all", "none", or a comma-separated list of application_names.
// A long-running analytics standby left out of the list cannot hold back
// vacuum on the primary, while the listed standbys stay protected.
type FeedbackPolicy struct {
	all  bool
	apps map[string]bool
}

// ParseFeedbackPolicy parses the --feedback-from value.
func ParseFeedbackPolicy(s string) FeedbackPolicy {
	switch strings.TrimSpace(s) {
	case "", "all":
		return FeedbackPolicy{all: true}
	case "none":
		return FeedbackPolicy{}
	}
	p := FeedbackPolicy{apps: make(map[string]bool)}
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			p.apps[a] = true
		}
	}
	return p
}

func (p FeedbackPolicy) counts(app string) bool { return p.all || p.apps[app] }

// fullXid orders xids across wraparound by their epoch.
func fullXid(epoch, xid uint32) uint64 { return uint64(epoch)<<32 | uint64(xid) }

// Feedback is the oldest xmin and catalog_xmin that streaming children
// covered by the feedback policy have reported: what the relay asks its
// parent to keep, as PostgreSQL's cascading standbys do.
func (s *Server) Feedback() (walstream.HotStandbyFeedback, bool) {
	var fb walstream.HotStandbyFeedback
	var xmin, catalog uint64
	s.mu.Lock()
	sessions := make([]*session, 0, len(s.sessions))
	for sess := range s.sessions {
		sessions = append(sessions, sess)
	}
	s.mu.Unlock()
	for _, sess := range sessions {
		st, ok := sess.status()
		if !ok || st.State != "streaming" || !s.cfg.FeedbackFrom.counts(st.ApplicationName) {
			continue
		}
		if st.Xmin != 0 {
			if x := fullXid(st.XminEpoch, st.Xmin); xmin == 0 || x < xmin {
				xmin, fb.Xmin, fb.XminEpoch = x, st.Xmin, st.XminEpoch
			}
		}
		if st.CatalogXmin != 0 {
			if x := fullXid(st.CatalogXminEpoch, st.CatalogXmin); catalog == 0 || x < catalog {
				catalog, fb.CatalogXmin, fb.CatalogXminEpoch = x, st.CatalogXmin, st.CatalogXminEpoch
			}
		}
	}
	return fb, xmin != 0 || catalog != 0
}
