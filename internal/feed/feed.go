// Package feed is the replica routing feed that managers and relays serve:
// which standbys may take a read now, under a lag bound or having replayed
// a given LSN. It holds the parts both share: the answer's shape, query
// parsing, the admission rule, the order, and how lag is measured against
// a history of the primary's position.
package feed

import (
	"cmp"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/walrelay/walrelay/internal/units"
	"github.com/walrelay/walrelay/walstream"
)

// Replica is one standby as the feed reports it. LSNs are PostgreSQL's
// X/Y text, as an application passes them around.
type Replica struct {
	Name string `json:"name"`
	// Host and Port are where clients connect (from the standby's
	// registered conninfo); Port is 0 when the server does not know it.
	Host   string `json:"host"`
	Port   int    `json:"port,omitempty"`
	Zone   string `json:"zone,omitempty"`
	Tier   string `json:"tier,omitempty"`
	Parent string `json:"parent,omitempty"`
	// Timeline the standby receives on; 0 when unknown.
	Timeline   uint32 `json:"timeline,omitempty"`
	ReplayLSN  string `json:"replay_lsn"`
	ReceiveLSN string `json:"receive_lsn,omitempty"`
	// LagBytes is WAL the primary had written that the standby had not
	// replayed, and LagSeconds how long before the observation the
	// primary wrote the oldest of it; both 0 when it had replayed
	// everything, however idle the primary.
	LagBytes   uint64  `json:"lag_bytes"`
	LagSeconds float64 `json:"lag_seconds"`
	// AgeSeconds is how old the figures are when the answer is made.
	AgeSeconds float64 `json:"age_seconds"`
	// LastXactReplayTimestamp is pg_last_xact_replay_timestamp(): the
	// commit time of the last transaction replayed (empty when unknown).
	// It is not the lag: on an idle primary it grows old while the
	// standby is current.
	LastXactReplayTimestamp string `json:"last_xact_replay_timestamp,omitempty"`
	// Paused is true while replay is paused (pg_wal_replay_pause()).
	Paused bool `json:"paused,omitempty"`
	// ActiveSessions counts the standby's client sessions running a query
	// (-1: unknown); fewer come first.
	ActiveSessions int `json:"active_sessions"`
	// Source says where the position came from: "sql" (the manager's own
	// query) or "relay" (the standby's status messages, via its relay).
	Source string `json:"source"`

	replay walstream.LSN
	age    time.Duration
	lag    time.Duration
}

// Position is one observation of a standby, before lag is worked out.
type Position struct {
	Replay, Receive walstream.LSN
	Timeline        uint32
	// ReplayedCommit is the commit time of the last transaction replayed.
	ReplayedCommit time.Time
	Paused         bool
	ActiveSessions int
	At             time.Time
	Source         string
}

// Fill sets r's position fields from p, measuring lag against h (the
// primary's position history) and age against now.
func (r *Replica) Fill(p Position, h *History, now time.Time) {
	r.replay = p.Replay
	r.ReplayLSN = p.Replay.String()
	if p.Receive != 0 {
		r.ReceiveLSN = p.Receive.String()
	}
	r.Timeline, r.Paused, r.ActiveSessions, r.Source = p.Timeline, p.Paused, p.ActiveSessions, p.Source
	if !p.ReplayedCommit.IsZero() {
		r.LastXactReplayTimestamp = p.ReplayedCommit.UTC().Format(time.RFC3339Nano)
	}
	r.age = max(0, now.Sub(p.At))
	r.AgeSeconds = round3(r.age.Seconds())
	r.LagBytes, r.lag = h.LagAt(p.Replay, p.At)
	r.LagSeconds = round3(r.lag.Seconds())
}

func round3(f float64) float64 { return float64(int64(f*1000+0.5)) / 1000 }

// Replayed returns the replay position.
func (r *Replica) Replayed() walstream.LSN { return r.replay }

// Query is what a caller asks of the feed. Zero fields do not constrain.
type Query struct {
	MaxLagBytes uint64
	MaxLagTime  time.Duration
	HasLagBytes bool
	HasLagTime  bool
	MinLSN      walstream.LSN
	Tier, Zone  string
	PreferZone  string
	// MaxAge drops standbys whose figures are older: an old figure says
	// nothing about now. Default DefaultMaxAge.
	MaxAge time.Duration
	Limit  int
	// Wait, with MinLSN, holds the answer up to this long for a standby
	// to reach MinLSN.
	Wait time.Duration
}

// DefaultMaxAge is how old a figure may be for its standby to be listed.
const DefaultMaxAge = 2 * time.Second

// MaxWait bounds ?wait=.
const MaxWait = 30 * time.Second

// ParseQuery reads max_lag (a duration such as 100ms, or a size such as
// 16MB; repeat it to bound both), min_lsn, tier, zone, prefer_zone,
// max_age, limit and wait.
func ParseQuery(v url.Values) (Query, error) {
	q := Query{MaxAge: DefaultMaxAge}
	for _, s := range v["max_lag"] {
		for _, part := range strings.Split(s, ",") {
			if err := q.addMaxLag(part); err != nil {
				return q, err
			}
		}
	}
	if s := v.Get("min_lsn"); s != "" {
		l, err := walstream.ParseLSN(s)
		if err != nil {
			return q, fmt.Errorf("min_lsn %q: want an LSN such as 0/3000060", s)
		}
		q.MinLSN = l
	}
	q.Tier, q.Zone, q.PreferZone = v.Get("tier"), v.Get("zone"), v.Get("prefer_zone")
	if s := v.Get("max_age"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d <= 0 {
			return q, fmt.Errorf("max_age %q: want a positive duration such as 2s", s)
		}
		q.MaxAge = d
	}
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			return q, fmt.Errorf("limit %q: want a count", s)
		}
		q.Limit = n
	}
	if s := v.Get("wait"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil || d < 0 || d > MaxWait {
			return q, fmt.Errorf("wait %q: want a duration up to %s", s, MaxWait)
		}
		q.Wait = d
	}
	for k := range v {
		switch k {
		case "max_lag", "min_lsn", "tier", "zone", "prefer_zone", "max_age", "limit", "wait":
		default:
			return q, fmt.Errorf("unknown parameter %q (known: max_lag, min_lsn, tier, zone, prefer_zone, max_age, limit, wait)", k)
		}
	}
	return q, nil
}

func (q *Query) addMaxLag(s string) error {
	s = strings.TrimSpace(s)
	if s == "" {
		return errors.New("max_lag is empty: want a duration (100ms) or a size (16MB)")
	}
	// A bare number is a size in bytes (time.ParseDuration would take
	// "0" as a duration and refuse every other bare number).
	bare := strings.TrimLeft(s, "0123456789") == ""
	if d, err := time.ParseDuration(s); err == nil && !bare {
		if d < 0 {
			return fmt.Errorf("max_lag %q is negative", s)
		}
		q.MaxLagTime, q.HasLagTime = d, true
		return nil
	}
	b, err := units.ParseSize(s)
	if err != nil {
		return fmt.Errorf("max_lag %q: want a duration (100ms) or a size (16MB)", s)
	}
	q.MaxLagBytes, q.HasLagBytes = b, true
	return nil
}

// Values renders q as URL parameters (the CLI's request).
func (q Query) Values() url.Values {
	v := url.Values{}
	if q.HasLagTime {
		v.Add("max_lag", q.MaxLagTime.String())
	}
	if q.HasLagBytes {
		v.Add("max_lag", strconv.FormatUint(q.MaxLagBytes, 10)+"B")
	}
	if q.MinLSN != 0 {
		v.Set("min_lsn", q.MinLSN.String())
	}
	for k, s := range map[string]string{"tier": q.Tier, "zone": q.Zone, "prefer_zone": q.PreferZone} {
		if s != "" {
			v.Set(k, s)
		}
	}
	if q.MaxAge != 0 && q.MaxAge != DefaultMaxAge {
		v.Set("max_age", q.MaxAge.String())
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	if q.Wait > 0 {
		v.Set("wait", q.Wait.String())
	}
	return v
}

// Admit says whether r satisfies every condition of q, and if not, why.
func (q Query) Admit(r *Replica) (bool, string) {
	switch {
	case q.MaxAge > 0 && r.age > q.MaxAge:
		return false, fmt.Sprintf("its figures are %.1fs old (max_age %s)", r.age.Seconds(), q.MaxAge)
	case q.MinLSN != 0 && r.replay < q.MinLSN:
		return false, fmt.Sprintf("it has replayed %s, not %s", r.replay, q.MinLSN)
	case q.HasLagBytes && r.LagBytes > q.MaxLagBytes:
		return false, fmt.Sprintf("it lags %d bytes (max %d)", r.LagBytes, q.MaxLagBytes)
	case q.HasLagTime && r.lag > q.MaxLagTime:
		return false, fmt.Sprintf("it lags %.3fs (max %s)", r.lag.Seconds(), q.MaxLagTime)
	case q.Tier != "" && r.Tier != q.Tier:
		return false, fmt.Sprintf("its tier is %q", r.Tier)
	case q.Zone != "" && r.Zone != q.Zone:
		return false, fmt.Sprintf("its zone is %q", r.Zone)
	}
	return true, ""
}

// Select returns the replicas q admits, best first: in the preferred zone,
// then least loaded, then least behind, then by name; at most q.Limit.
func Select(rs []Replica, q Query) []Replica {
	out := make([]Replica, 0, len(rs))
	for i := range rs {
		if ok, _ := q.Admit(&rs[i]); ok {
			out = append(out, rs[i])
		}
	}
	slices.SortFunc(out, func(a, b Replica) int {
		if q.PreferZone != "" && (a.Zone == q.PreferZone) != (b.Zone == q.PreferZone) {
			if a.Zone == q.PreferZone {
				return -1
			}
			return 1
		}
		if c := cmp.Compare(load(a), load(b)); c != 0 {
			return c
		}
		if c := cmp.Compare(a.LagBytes, b.LagBytes); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
	if q.Limit > 0 && len(out) > q.Limit {
		out = out[:q.Limit]
	}
	return out
}

// load orders unknown load after any known one.
func load(r Replica) int {
	if r.ActiveSessions < 0 {
		return 1 << 30
	}
	return r.ActiveSessions
}

// Response is GET /v1/replicas.
type Response struct {
	// PrimaryLSN is the primary's latest sampled position and
	// PrimaryAgeSeconds its age.
	PrimaryLSN        string    `json:"primary_lsn,omitempty"`
	PrimaryAgeSeconds float64   `json:"primary_age_seconds,omitempty"`
	Replicas          []Replica `json:"replicas"`
}

// HealthResponse is GET /v1/replicas/NAME/health: 200 when Healthy.
type HealthResponse struct {
	Healthy bool     `json:"healthy"`
	Reason  string   `json:"reason,omitempty"`
	Replica *Replica `json:"replica,omitempty"`
}
