package topology

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/hashicorp/raft"
)

// Liveness is kept in memory by the leader: heartbeats are not logged, only
// the state changes they cause (alive -> failed, failed -> alive) and the
// re-assignments placement makes then.
type liveness struct {
	mu       sync.Mutex
	lastSeen map[string]time.Time
	since    time.Time // when this member last became leader
}

func (m *Manager) handleHeartbeat(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	var hb HeartbeatRequest
	if err := json.Unmarshal(body, &hb); err != nil || hb.Name == "" {
		writeJSON(w, http.StatusBadRequest, CommandResponse{Error: "heartbeat needs a name"})
		return
	}
	if m.forward(w, r, body) {
		return
	}
	m.live.mu.Lock()
	m.live.lastSeen[hb.Name] = time.Now()
	m.live.mu.Unlock()
	resp := HeartbeatResponse{Epoch: m.fsm.Tree().Epoch}
	if hb.Report != nil {
		resp.Slots = m.obs.noteRelay(hb.Name, *hb.Report)
		resp.Endpoints = m.childEndpoints(hb.Report)
	}
	writeJSON(w, http.StatusOK, resp)
}

// superviseOnce is one pass of the leader's loop: mark relays that missed
// heartbeats failed (and returning ones alive), then place whatever needs a
// parent. Each change is one log entry.
func (m *Manager) superviseOnce(now time.Time) {
	if m.raft.State() != raft.Leader {
		m.live.mu.Lock()
		m.live.since = time.Time{}
		m.live.mu.Unlock()
		return
	}
	m.live.mu.Lock()
	if m.live.since.IsZero() {
		// New leader: everyone gets a full timeout to report in.
		m.live.since = now
	}
	since := m.live.since
	seen := make(map[string]time.Time, len(m.live.lastSeen))
	for k, v := range m.live.lastSeen {
		seen[k] = v
	}
	m.live.mu.Unlock()

	tree := m.fsm.Tree()
	for _, name := range tree.Names() {
		n := tree.Nodes[name]
		if n.Kind != KindRelay {
			continue
		}
		last, ok := seen[name]
		if !ok || last.Before(since) {
			last = since
		}
		switch {
		case n.State == StateAlive && now.Sub(last) > m.cfg.FailureTimeout:
			m.log.Warn("relay missed heartbeats: marking it failed", "relay", name, "last_seen", last)
			m.apply(Command{Op: OpSetState, Name: name, State: StateFailed})
		case n.State == StateFailed && now.Sub(last) <= m.cfg.FailureTimeout && seen[name].After(since):
			m.log.Info("relay is back", "relay", name)
			// It rejoins as a leaf: its old children have moved on.
			m.apply(Command{Op: OpSetState, Name: name, State: StateAlive})
		}
	}
	tree = m.fsm.Tree()
	if moves := Place(tree, m.cfg.Policy); len(moves) > 0 {
		m.log.Info("placing nodes", "assignments", moves)
		was := make(map[string]string, len(moves))
		for child := range moves {
			was[child] = tree.Nodes[child].Parent
		}
		m.apply(Command{Op: OpAssign, Assignments: moves, Was: was})
		select {
		case m.obs.kick <- struct{}{}:
		default:
		}
	}
}

func (m *Manager) apply(c Command) {
	f := m.raft.Apply(c.Encode(), 5*time.Second)
	if err := f.Error(); err != nil {
		m.log.Warn("apply", "op", c.Op, "err", err)
		return
	}
	if res, _ := f.Response().(ApplyResult); res.Err != nil {
		m.log.Warn("apply rejected", "op", c.Op, "err", res.Err)
	}
}

// supervise runs superviseOnce every interval until ctx ends.
func (m *Manager) supervise(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			m.superviseOnce(now)
		}
	}
}
