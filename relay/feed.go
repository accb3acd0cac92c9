package relay

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/walrelay/walrelay/internal/feed"
	"github.com/walrelay/walrelay/walstream"
)

// A relay serves the replica routing feed for its own children, from the
// positions their status messages carry (see Config.ReplyInterval for how
// fresh they are). Lag is measured against the parent's position as the
// parent reports it, sampled by RunFeedSampler. The managers' feed covers
// the whole tree; this one answers without them.

// Endpoint is where clients reach a child for reads, as the managers know
// it from the standby's registration.
type Endpoint struct {
	Host string `json:"host"`
	Port int    `json:"port"`
	Zone string `json:"zone,omitempty"`
	Tier string `json:"tier,omitempty"`
}

// feedState is the relay's part of the feed.
type feedState struct {
	hist      *feed.History
	mu        sync.Mutex
	endpoints map[string]Endpoint // by application_name
}

// SetChildEndpoints records the endpoints of the standbys the managers
// know, by name (their application_name on this relay).
func (s *Server) SetChildEndpoints(eps map[string]Endpoint) {
	s.feed.mu.Lock()
	s.feed.endpoints = eps
	s.feed.mu.Unlock()
}

// ParentPosition is what the feed sampler reads: the parent's reported
// WAL end.
type ParentPosition interface {
	ServerWALEnd() walstream.LSN
}

// RunFeedSampler records the parent's position (or this relay's durable
// end, if further) every interval until ctx ends.
func (s *Server) RunFeedSampler(ctx context.Context, parent ParentPosition, interval time.Duration) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case now := <-t.C:
			_, durable := s.cfg.Source.DurableEnd()
			pos := durable
			if parent != nil {
				pos = max(pos, parent.ServerWALEnd())
			}
			if pos != 0 {
				s.feed.hist.Add(now, pos)
			}
		}
	}
}

// Replicas returns every streaming child that reports a replay position
// (standbys; not pg_receivewal or relays, which replay nothing).
func (s *Server) Replicas(now time.Time) []feed.Replica {
	s.feed.mu.Lock()
	eps := s.feed.endpoints
	s.feed.mu.Unlock()
	var out []feed.Replica
	for _, c := range s.Sessions() {
		if c.State != "streaming" || c.Relay || c.ReplayLSN == 0 || c.LastReplyAt.IsZero() {
			continue
		}
		r := feed.Replica{Name: c.ApplicationName, Parent: s.cfg.NodeID}
		r.Host, _, _ = net.SplitHostPort(c.Address)
		if ep, ok := eps[c.ApplicationName]; ok {
			r.Host, r.Port, r.Zone, r.Tier = ep.Host, ep.Port, ep.Zone, ep.Tier
		}
		r.Fill(feed.Position{Replay: c.ReplayLSN, Receive: c.FlushLSN, Timeline: uint32(c.Timeline),
			ActiveSessions: -1, At: c.LastReplyAt, Source: "relay"}, s.feed.hist, now)
		out = append(out, r)
	}
	return out
}

// FeedHandlers adds GET /v1/replicas and GET /v1/replicas/{name}/health.
func (s *Server) FeedHandlers(mux *http.ServeMux) {
	mux.HandleFunc("GET /v1/replicas", func(w http.ResponseWriter, r *http.Request) {
		q, err := feed.ParseQuery(r.URL.Query())
		if err != nil {
			feedJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		deadline := time.Now().Add(q.Wait)
		for {
			wake := s.cfg.Source.Wait()
			resp := feed.Response{Replicas: feed.Select(s.Replicas(time.Now()), q)}
			if lsn, at, ok := s.feed.hist.Latest(); ok {
				resp.PrimaryLSN, resp.PrimaryAgeSeconds = lsn.String(), time.Since(at).Seconds()
			}
			if len(resp.Replicas) > 0 || q.Wait == 0 || !time.Now().Before(deadline) {
				feedJSON(w, http.StatusOK, resp)
				return
			}
			// Children's replies arrive at any time: look again soon,
			// or at once when new WAL is durable.
			select {
			case <-wake:
			case <-time.After(min(20*time.Millisecond, time.Until(deadline))):
			case <-r.Context().Done():
				return
			}
		}
	})
	mux.HandleFunc("GET /v1/replicas/{name}/health", func(w http.ResponseWriter, r *http.Request) {
		q, err := feed.ParseQuery(r.URL.Query())
		if err != nil {
			feedJSON(w, http.StatusBadRequest, map[string]string{"error": err.Error()})
			return
		}
		name := r.PathValue("name")
		for _, rep := range s.Replicas(time.Now()) {
			if rep.Name != name {
				continue
			}
			ok, why := q.Admit(&rep)
			code := http.StatusOK
			if !ok {
				code = http.StatusServiceUnavailable
			}
			feedJSON(w, code, feed.HealthResponse{Healthy: ok, Reason: why, Replica: &rep})
			return
		}
		feedJSON(w, http.StatusServiceUnavailable, feed.HealthResponse{Reason: "no standby named " + name + " is streaming from this relay"})
	})
}

func feedJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
