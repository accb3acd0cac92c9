package topology

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/hashicorp/raft"

	"github.com/walrelay/walrelay/walstream"
)

// What the leader knows and can do, for the failover controller (package
// failover), which runs beside the manager and acts only while it leads.

// Observation is the leader's latest SQL reading of a PostgreSQL node.
type Observation struct {
	At              time.Time
	Err             error
	InRecovery      bool
	ReceiveLSN      walstream.LSN
	ReplayLSN       walstream.LSN
	CurrentLSN      walstream.LSN
	Timeline        uint32
	ReceiverStatus  string
	Sender          string
	PrimaryConninfo string
	PrimarySlot     string
	// SyncStandbyNames is the node's synchronous_standby_names as last
	// read while it was the primary (kept after it stops answering).
	SyncStandbyNames string
}

// RelayObservation is a relay's latest heartbeat report.
type RelayObservation struct {
	At     time.Time
	Report RelayReport
}

// IsLeader tells whether this member leads the cluster now.
func (m *Manager) IsLeader() bool { return m.raft.State() == raft.Leader }

// Tree is this member's applied tree.
func (m *Manager) Tree() *Tree { return m.fsm.Tree() }

// Observed returns the leader's latest reading of node name.
func (m *Manager) Observed(name string) (Observation, bool) {
	m.obs.mu.Lock()
	defer m.obs.mu.Unlock()
	r, ok := m.obs.sql[name]
	if !ok {
		return Observation{}, false
	}
	st := r.st
	return Observation{At: r.at, Err: r.err, InRecovery: st.InRecovery, ReceiveLSN: st.ReceiveLSN, ReplayLSN: st.ReplayLSN,
		CurrentLSN: st.CurrentLSN, Timeline: st.Timeline, ReceiverStatus: st.ReceiverStatus, Sender: st.Sender,
		PrimaryConninfo: st.PrimaryConninfo, PrimarySlot: st.PrimarySlot, SyncStandbyNames: m.obs.primarySync[name]}, true
}

// RelayReports returns every relay's latest heartbeat report.
func (m *Manager) RelayReports() map[string]RelayObservation {
	m.obs.mu.Lock()
	defer m.obs.mu.Unlock()
	out := make(map[string]RelayObservation, len(m.obs.relays))
	for k, v := range m.obs.relays {
		out[k] = RelayObservation{At: v.at, Report: v.rep}
	}
	return out
}

// PrimarySeen is when the leader last read the current primary over SQL
// and found it out of recovery; a member that just became leader counts
// from then, so it gives the primary a full timeout.
func (m *Manager) PrimarySeen() time.Time {
	m.obs.mu.Lock()
	defer m.obs.mu.Unlock()
	seen := m.obs.primarySeen[m.fsm.Tree().Primary]
	if seen.Before(m.obs.leadingSince) {
		return m.obs.leadingSince
	}
	return seen
}

// Apply commits a command through Raft; only the leader can.
func (m *Manager) Apply(ctx context.Context, c Command) (uint64, error) {
	if !m.IsLeader() {
		return 0, errors.New("not the leader")
	}
	timeout := 10 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = time.Until(d)
	}
	f := m.raft.Apply(c.Encode(), timeout)
	if err := f.Error(); err != nil {
		return 0, fmt.Errorf("apply %s: %w", c.Op, err)
	}
	res := f.Response().(ApplyResult)
	if res.Err != nil {
		return res.Epoch, res.Err
	}
	// Placement and re-pointing should not wait for their next tick.
	select {
	case m.obs.kick <- struct{}{}:
	default:
	}
	return res.Epoch, nil
}

// Query runs SQL on a registered node over the leader's session with it and
// returns the rows of the last statement as text (NULL as "").
func (m *Manager) Query(ctx context.Context, node, sql string) ([][]string, error) {
	n := m.fsm.Tree().Nodes[node]
	if n == nil || n.Conninfo == "" {
		return nil, fmt.Errorf("no node %q with a connection string", node)
	}
	res, err := m.obs.conn(node, n.Conninfo).exec(ctx, sql)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", node, err)
	}
	var rows [][]string
	if len(res) > 0 {
		for _, r := range res[len(res)-1].Rows {
			row := make([]string, len(r))
			for i, v := range r {
				row[i] = string(v)
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// HandleFunc adds a route to the manager's API (before Run).
func (m *Manager) HandleFunc(pattern string, h http.HandlerFunc) { m.mux.HandleFunc(pattern, h) }

// Forward sends a write to the leader and relays its answer; false means
// this member leads and must handle the request itself.
func (m *Manager) Forward(w http.ResponseWriter, r *http.Request, body []byte) bool {
	return m.forward(w, r, body)
}
