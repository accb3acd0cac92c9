package topology

import (
	"context"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/hashicorp/raft"

	"github.com/walrelay/walrelay/internal/feed"
	"github.com/walrelay/walrelay/walstream"
)

// The replica routing feed: which managed standbys may serve a read now.
// The leader reads every managed standby's replay position (and the
// primary's write position, for lag) on sessions of its own every
// PositionInterval, separate from the observe loop so that a slow status
// query or a re-point never delays a position. Relays add the positions
// from their children's status replies with each heartbeat. Everything is
// in memory; followers forward feed requests to the leader.

// DefaultPositionInterval is how often the leader reads positions.
const DefaultPositionInterval = 100 * time.Millisecond

type replicaFeed struct {
	hist *feed.History

	mu      sync.Mutex
	pos     map[string]feed.Position // read by SQL, by standby name
	paused  map[string]bool
	busy    map[string]bool // a query to this node is in flight
	conns   map[string]*nodeConn
	updated chan struct{} // closed and replaced at each new position
}

func newReplicaFeed() *replicaFeed {
	return &replicaFeed{hist: feed.NewHistory(6000), pos: map[string]feed.Position{}, paused: map[string]bool{},
		busy: map[string]bool{}, conns: map[string]*nodeConn{}, updated: make(chan struct{})}
}

func (f *replicaFeed) reset() {
	f.mu.Lock()
	conns := f.conns
	f.conns = map[string]*nodeConn{}
	f.pos = map[string]feed.Position{}
	f.mu.Unlock()
	for _, c := range conns {
		c.close()
	}
	f.hist.Reset()
}

// changed returns a channel closed at the next new position.
func (f *replicaFeed) changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.updated
}

func (f *replicaFeed) notify() {
	f.mu.Lock()
	close(f.updated)
	f.updated = make(chan struct{})
	f.mu.Unlock()
}

func (f *replicaFeed) conn(name, conninfo string) *nodeConn {
	f.mu.Lock()
	defer f.mu.Unlock()
	c := f.conns[name]
	if c != nil && c.conninfo != conninfo {
		go c.close()
		c = nil
	}
	if c == nil {
		c = &nodeConn{conninfo: conninfo}
		f.conns[name] = c
	}
	return c
}

// pollPositions reads positions every interval while this member leads.
// Each node has at most one query in flight: a hung standby delays only
// its own figures, which then age out of the feed.
func (m *Manager) pollPositions(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	var wg sync.WaitGroup
	defer m.feed.reset()
	defer wg.Wait()
	leading := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if m.raft.State() != raft.Leader {
			if leading {
				m.feed.reset()
				leading = false
			}
			continue
		}
		leading = true
		tree := m.fsm.Tree()
		for _, name := range tree.Names() {
			n := tree.Nodes[name]
			isPrimary := name == tree.Primary
			if n.Conninfo == "" || (n.Kind != KindStandby && !isPrimary) || n.State == StateFenced {
				continue
			}
			m.feed.mu.Lock()
			if m.feed.busy[name] {
				m.feed.mu.Unlock()
				continue
			}
			m.feed.busy[name] = true
			m.feed.mu.Unlock()
			nc := m.feed.conn(name, n.Conninfo)
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() {
					m.feed.mu.Lock()
					delete(m.feed.busy, name)
					m.feed.mu.Unlock()
				}()
				qctx, cancel := context.WithTimeout(ctx, time.Second)
				defer cancel()
				if isPrimary {
					m.readPrimaryPosition(qctx, nc)
				} else {
					m.readStandbyPosition(qctx, name, nc)
				}
			}()
		}
	}
}

const primaryPositionSQL = `SELECT CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_current_wal_lsn()::text END`

func (m *Manager) readPrimaryPosition(ctx context.Context, nc *nodeConn) {
	sent := time.Now()
	res, err := nc.exec(ctx, primaryPositionSQL)
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0][0]) == 0 {
		return
	}
	lsn, err := walstream.ParseLSN(string(res[0].Rows[0][0]))
	if err != nil {
		return
	}
	// The position was read somewhere between sending and receiving.
	m.feed.hist.Add(sent.Add(time.Since(sent)/2), lsn)
	m.feed.notify()
}

// standbyPositionSQL reads what the feed needs, cheaply: replay and receive
// positions, the receiving timeline, whether replay is paused, how many
// client sessions are running a query (the load the feed orders by) and the
// commit time of the last transaction replayed.
const standbyPositionSQL = `SELECT pg_is_in_recovery(),
 COALESCE(pg_last_wal_replay_lsn()::text, ''),
 COALESCE(pg_last_wal_receive_lsn()::text, ''),
 COALESCE((SELECT received_tli::text FROM pg_stat_wal_receiver), ''),
 CASE WHEN pg_is_in_recovery() THEN pg_is_wal_replay_paused() ELSE false END,
 (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' AND state = 'active' AND pid <> pg_backend_pid()),
 COALESCE(extract(epoch FROM pg_last_xact_replay_timestamp())::text, '')`

func (m *Manager) readStandbyPosition(ctx context.Context, name string, nc *nodeConn) {
	sent := time.Now()
	res, err := nc.exec(ctx, standbyPositionSQL)
	if err != nil || len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 7 {
		return
	}
	at := sent.Add(time.Since(sent) / 2)
	row := res[0].Rows[0]
	if string(row[0]) != "t" {
		// Promoted or never a standby: not a replica, whatever it was.
		m.feed.mu.Lock()
		delete(m.feed.pos, name)
		m.feed.mu.Unlock()
		return
	}
	p := feed.Position{At: at, Source: "sql", ActiveSessions: -1}
	p.Replay, _ = walstream.ParseLSN(string(row[1]))
	p.Receive, _ = walstream.ParseLSN(string(row[2]))
	if tli, err := strconv.ParseUint(string(row[3]), 10, 32); err == nil {
		p.Timeline = uint32(tli)
	}
	p.Paused = string(row[4]) == "t"
	if n, err := strconv.Atoi(string(row[5])); err == nil {
		p.ActiveSessions = n
	}
	if sec, err := strconv.ParseFloat(string(row[6]), 64); err == nil {
		p.ReplayedCommit = time.UnixMicro(int64(sec * 1e6))
	}
	m.feed.mu.Lock()
	m.feed.pos[name] = p
	m.feed.mu.Unlock()
	m.feed.notify()
}

// replicaCandidates returns every managed standby the feed could list,
// with its freshest figures, and why each other standby cannot be listed
// at all.
func (m *Manager) replicaCandidates(now time.Time) ([]feed.Replica, map[string]string) {
	tree := m.fsm.Tree()
	primaryTLI := tree.Timeline
	m.feed.mu.Lock()
	sqlPos := make(map[string]feed.Position, len(m.feed.pos))
	for k, v := range m.feed.pos {
		sqlPos[k] = v
	}
	m.feed.mu.Unlock()
	// Positions relays heard from their children, by child name.
	relayPos := map[string]feed.Position{}
	m.obs.mu.Lock()
	for _, ro := range m.obs.relays {
		if now.Sub(ro.at) > m.cfg.FailureTimeout {
			continue
		}
		for _, c := range ro.rep.Children {
			p := feed.Position{Replay: c.ReplayLSN, Receive: c.FlushLSN, Timeline: c.Timeline, ActiveSessions: -1,
				At: ro.at.Add(-time.Duration(c.ReplyAgeMs) * time.Millisecond), Source: "relay"}
			if old, ok := relayPos[c.Name]; !ok || p.At.After(old.At) {
				relayPos[c.Name] = p
			}
		}
	}
	sqlTLI := map[string]uint32{}
	for name, o := range m.obs.sql {
		if o.err == nil {
			sqlTLI[name] = o.st.Timeline
		}
	}
	m.obs.mu.Unlock()

	var out []feed.Replica
	excluded := map[string]string{}
	for _, name := range tree.Names() {
		n := tree.Nodes[name]
		if n.Kind != KindStandby || name == tree.Primary {
			continue
		}
		if n.State == StateFenced {
			excluded[name] = "it is fenced"
			continue
		}
		sp, hasSQL := sqlPos[name]
		rp, hasRelay := relayPos[name]
		var p feed.Position
		switch {
		case hasSQL && hasRelay:
			p = sp
			if rp.At.After(sp.At) {
				// The relay heard more recently; keep the SQL-only facts.
				rp.Paused, rp.ActiveSessions, rp.ReplayedCommit = sp.Paused, sp.ActiveSessions, sp.ReplayedCommit
				if rp.Timeline == 0 {
					rp.Timeline = sp.Timeline
				}
				p = rp
			}
		case hasSQL:
			p = sp
		case hasRelay:
			p = rp
		default:
			excluded[name] = "no position read yet (not in recovery, or unreachable)"
			continue
		}
		if p.Timeline == 0 {
			p.Timeline = sqlTLI[name]
		}
		if primaryTLI != 0 && p.Timeline != 0 && p.Timeline != primaryTLI {
			// Its positions are on another timeline's WAL: comparing them
			// with the primary's says nothing.
			excluded[name] = "it is on timeline " + strconv.FormatUint(uint64(p.Timeline), 10) +
				", the primary on " + strconv.FormatUint(uint64(primaryTLI), 10)
			continue
		}
		r := feed.Replica{Name: name, Zone: n.Zone, Tier: string(n.Tier), Parent: n.Parent}
		if ep := Endpoint(n.Conninfo); ep != "" {
			host, port := splitHostPort(ep)
			r.Host, r.Port = host, port
		}
		r.Fill(p, m.feed.hist, now)
		out = append(out, r)
	}
	return out, excluded
}

func splitHostPort(ep string) (string, int) {
	u, err := url.Parse("//" + ep)
	if err != nil {
		return ep, 0
	}
	port, _ := strconv.Atoi(u.Port())
	return u.Hostname(), port
}

// Replicas answers a feed query on the leader.
func (m *Manager) Replicas(q feed.Query) feed.Response {
	all, _ := m.replicaCandidates(time.Now())
	resp := feed.Response{Replicas: feed.Select(all, q)}
	if lsn, at, ok := m.feed.hist.Latest(); ok {
		resp.PrimaryLSN, resp.PrimaryAgeSeconds = lsn.String(), time.Since(at).Seconds()
	}
	return resp
}

func (m *Manager) handleReplicas(w http.ResponseWriter, r *http.Request) {
	q, err := feed.ParseQuery(r.URL.Query())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, CommandResponse{Error: err.Error()})
		return
	}
	if m.forward(w, r, nil) {
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	deadline := time.Now().Add(q.Wait)
	for {
		changed := m.feed.changed()
		resp := m.Replicas(q)
		if len(resp.Replicas) > 0 || q.Wait == 0 || !time.Now().Before(deadline) {
			writeJSON(w, http.StatusOK, resp)
			return
		}
		select {
		case <-changed:
		case <-time.After(time.Until(deadline)):
		case <-r.Context().Done():
			return
		}
	}
}

// handleReplicaHealth answers 200 when the standby satisfies the query and
// 503 when it does not (the convention HAProxy's httpchk and Patroni's
// /replica?lag= use), 404 when no such standby is managed.
func (m *Manager) handleReplicaHealth(w http.ResponseWriter, r *http.Request) {
	q, err := feed.ParseQuery(r.URL.Query())
	if err != nil {
		writeJSON(w, http.StatusBadRequest, CommandResponse{Error: err.Error()})
		return
	}
	if m.forward(w, r, nil) {
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	name := r.PathValue("name")
	all, excluded := m.replicaCandidates(time.Now())
	for i := range all {
		if all[i].Name != name {
			continue
		}
		ok, why := q.Admit(&all[i])
		code := http.StatusOK
		if !ok {
			code = http.StatusServiceUnavailable
		}
		writeJSON(w, code, feed.HealthResponse{Healthy: ok, Reason: why, Replica: &all[i]})
		return
	}
	if why, ok := excluded[name]; ok {
		writeJSON(w, http.StatusServiceUnavailable, feed.HealthResponse{Reason: why})
		return
	}
	writeJSON(w, http.StatusNotFound, feed.HealthResponse{Reason: "no managed standby named " + name})
}

// childEndpoints are the registered endpoints of the managed standbys among
// a relay's reported children.
func (m *Manager) childEndpoints(rep *RelayReport) map[string]ChildEndpoint {
	if rep == nil || len(rep.Children) == 0 {
		return nil
	}
	tree := m.fsm.Tree()
	out := map[string]ChildEndpoint{}
	for _, c := range rep.Children {
		n, ok := tree.Nodes[c.Name]
		if !ok || n.Kind != KindStandby {
			continue
		}
		host, port := splitHostPort(Endpoint(n.Conninfo))
		out[c.Name] = ChildEndpoint{Host: host, Port: port, Zone: n.Zone, Tier: string(n.Tier)}
	}
	return out
}
