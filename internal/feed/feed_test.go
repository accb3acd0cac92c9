package feed

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/walstream"
)

func TestLagAtInterpolatesAndIdlePrimaryHasNoLag(t *testing.T) {
	h := NewHistory(100)
	t0 := time.Unix(1000, 0)
	// The primary writes 1 MB per 100 ms, then goes idle at 0/500000.
	for i := 0; i <= 5; i++ {
		h.Add(t0.Add(time.Duration(i)*100*time.Millisecond), walstream.LSN(i<<20))
	}
	for i := 6; i < 20; i++ {
		h.Add(t0.Add(time.Duration(i)*100*time.Millisecond), 5<<20)
	}
	at := t0.Add(500 * time.Millisecond)
	// 2.5 MB behind at 500 ms: the primary wrote past 2.5 MB at 250 ms.
	b, lag := h.LagAt(5<<19, at)
	if b != 5<<19 || lag < 249*time.Millisecond || lag > 251*time.Millisecond {
		t.Fatalf("half-way: %d bytes, %s", b, lag)
	}
	// At the primary's position: no lag, however long it has been idle.
	if b, lag := h.LagAt(5<<20, t0.Add(1900*time.Millisecond)); b != 0 || lag != 0 {
		t.Fatalf("caught up with an idle primary: %d bytes, %s", b, lag)
	}
	// Stuck at 1 MB while the primary went on: lag grows with time.
	_, l1 := h.LagAt(1<<20, t0.Add(time.Second))
	_, l2 := h.LagAt(1<<20, t0.Add(1900*time.Millisecond))
	if l2-l1 < 899*time.Millisecond || l1 < 899*time.Millisecond {
		t.Fatalf("a stuck standby's lag: %s then %s", l1, l2)
	}
	// Measured against the primary as of the observation, not later.
	if b, _ := h.LagAt(2<<20, t0.Add(300*time.Millisecond)); b != 1<<20 {
		t.Fatalf("bytes behind at 300 ms: %d", b)
	}
	// Behind every sample: at least as old as the oldest.
	if _, lag := h.LagAt(0, t0.Add(1900*time.Millisecond)); lag < 1900*time.Millisecond-time.Millisecond {
		t.Fatalf("behind the whole history: %s", lag)
	}
	// A new primary behind the old one's end starts a new history.
	h.Add(t0.Add(3*time.Second), 4<<20)
	if l, _, _ := h.Latest(); l != 4<<20 {
		t.Fatalf("latest %s", l)
	}
	if b, lag := h.LagAt(4<<20, t0.Add(3*time.Second)); b != 0 || lag != 0 {
		t.Fatalf("after reset: %d, %s", b, lag)
	}
}

func TestParseQuery(t *testing.T) {
	q, err := ParseQuery(url.Values{"max_lag": {"100ms", "16MB"}, "min_lsn": {"0/3000060"}, "tier": {"high"}, "zone": {"a"}, "limit": {"2"}})
	if err != nil {
		t.Fatal(err)
	}
	if !q.HasLagTime || q.MaxLagTime != 100*time.Millisecond || !q.HasLagBytes || q.MaxLagBytes != 16<<20 ||
		q.MinLSN != 0x3000060 || q.Tier != "high" || q.Zone != "a" || q.Limit != 2 || q.MaxAge != DefaultMaxAge {
		t.Fatalf("%+v", q)
	}
	if q2, err := ParseQuery(q.Values()); err != nil || q2 != q {
		t.Fatalf("round trip: %+v, %v", q2, err)
	}
	for _, bad := range []url.Values{
		{"max_lag": {"soon"}}, {"max_lag": {""}}, {"max_lag": {"-1s"}}, {"min_lsn": {"3000060"}},
		{"limit": {"x"}}, {"wait": {"1h"}}, {"max_age": {"0s"}}, {"lag": {"1s"}},
	} {
		if _, err := ParseQuery(bad); err == nil {
			t.Errorf("%v accepted", bad)
		} else if !strings.Contains(err.Error(), "want") && !strings.Contains(err.Error(), "unknown") && !strings.Contains(err.Error(), "negative") {
			t.Errorf("%v: unclear error %v", bad, err)
		}
	}
}

func TestSelectFiltersAndOrders(t *testing.T) {
	h := NewHistory(10)
	now := time.Unix(2000, 0)
	h.Add(now.Add(-2*time.Second), 0x1000)
	h.Add(now.Add(-time.Second), 0x2000)
	h.Add(now, 0x3000)
	mk := func(name, zone string, replay walstream.LSN, active int, age time.Duration) Replica {
		r := Replica{Name: name, Zone: zone, Tier: "default"}
		r.Fill(Position{Replay: replay, ActiveSessions: active, At: now.Add(-age), Source: "sql"}, h, now)
		return r
	}
	rs := []Replica{
		mk("a", "z1", 0x3000, 5, 0),
		mk("b", "z2", 0x3000, 1, 0),
		mk("c", "z1", 0x2800, 0, 0),
		mk("stale", "z1", 0x3000, 0, 3*time.Second),
		mk("behind", "z2", 0x1000, 0, 0),
	}
	names := func(rs []Replica) string {
		var s []string
		for _, r := range rs {
			s = append(s, r.Name)
		}
		return strings.Join(s, ",")
	}
	if got := names(Select(rs, Query{MaxAge: DefaultMaxAge, MinLSN: 0x3000})); got != "b,a" {
		t.Errorf("min_lsn: %s", got)
	}
	if got := names(Select(rs, Query{MaxAge: DefaultMaxAge, HasLagTime: true, MaxLagTime: 600 * time.Millisecond})); got != "c,b,a" {
		t.Errorf("max_lag 600ms: %s", got)
	}
	if got := names(Select(rs, Query{MaxAge: DefaultMaxAge, HasLagBytes: true, MaxLagBytes: 0x1000, PreferZone: "z1"})); got != "c,a,b" {
		t.Errorf("max_lag bytes, prefer z1: %s", got)
	}
	if got := names(Select(rs, Query{MaxAge: DefaultMaxAge, Zone: "z2", Limit: 1})); got != "behind" {
		t.Errorf("zone z2 limit 1: %s", got)
	}
	var q Query
	q.MaxAge = DefaultMaxAge
	if ok, why := q.Admit(&rs[3]); ok || !strings.Contains(why, "old") {
		t.Errorf("stale figure admitted: %v %q", ok, why)
	}
}
