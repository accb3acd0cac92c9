package feed

import (
	"net/url"
	"testing"
	"time"

	"github.com/walrelay/walrelay/walstream"
)

// FuzzParseQuery feeds the replica feed's query parser whatever a client
// may send: it must never panic, and whatever it accepts renders back to
// the same query.
func FuzzParseQuery(f *testing.F) {
	for _, s := range []string{
		"max_lag=100ms&max_lag=16MB&min_lsn=0/3000060&tier=high&zone=a&limit=2",
		"max_lag=1s,1GB&wait=2s&max_age=500ms&prefer_zone=b",
		"min_lsn=FFFFFFFF/FFFFFFFF", "max_lag=", "wait=31s", "limit=-1", "x=1", "%zz",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		q, err := ParseQuery(v)
		if err != nil {
			return
		}
		q2, err := ParseQuery(q.Values())
		if err != nil {
			t.Fatalf("%q parsed to %+v, whose rendering %q is refused: %v", raw, q, q.Values().Encode(), err)
		}
		if q2 != q {
			t.Fatalf("%q: %+v renders back as %+v", raw, q, q2)
		}
		h := NewHistory(4)
		now := time.Now()
		h.Add(now, 100)
		r := Replica{Name: "x"}
		r.Fill(Position{Replay: walstream.LSN(q.MinLSN), At: now}, h, now)
		q.Admit(&r)
		Select([]Replica{r}, q)
	})
}
