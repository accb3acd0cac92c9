package topology

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walrelay/walrelay/walstream"
)

// The leader watches the PostgreSQL nodes it manages (the primary and
// registered standbys) over ordinary SQL connections, keeps the positions
// relays report with their heartbeats, and acts on both: it re-points
// standbys whose assigned parent changed, and tells relays which slots to
// hold for standbys that may be moved to them. All of it lives in memory;
// a new leader rebuilds it within a few seconds.

// sqlStatus is one reading of a PostgreSQL node.
type sqlStatus struct {
	InRecovery      bool
	ReceiveLSN      walstream.LSN
	ReplayLSN       walstream.LSN
	CurrentLSN      walstream.LSN // the primary's write position
	Timeline        uint32
	ReceiverStatus  string // pg_stat_wal_receiver.status
	Sender          string // host:port it streams from
	PrimaryConninfo string
	PrimarySlot     string
	SegmentSize     uint64
	// SyncStandbyNames is synchronous_standby_names (meaningful on the
	// primary).
	SyncStandbyNames string
}

type sqlObs struct {
	at  time.Time
	st  sqlStatus
	err error
}

type relayObs struct {
	at  time.Time
	rep RelayReport
}

type lsnSample struct {
	at  time.Time
	lsn walstream.LSN
}

type observer struct {
	mu       sync.Mutex
	relays   map[string]relayObs
	sql      map[string]sqlObs
	primary  []lsnSample // the primary's write position, oldest first
	wants    []SlotWant
	repoints map[string]repointMark
	kick     chan struct{} // placement changed something
	// primarySeen is when each primary was last read out of recovery;
	// leadingSince when this member last became leader.
	primarySeen  map[string]time.Time
	primarySync  map[string]string // synchronous_standby_names as last read
	leadingSince time.Time
	// conns are used only by the observe loop (one node, one goroutine per
	// round), so they need no lock of their own beyond map access.
	conns map[string]*nodeConn
}

type repointMark struct {
	target string
	at     time.Time
}

// nodeConn is the manager's SQL session with one node. The observe loop
// and the failover controller share it, one statement at a time.
type nodeConn struct {
	conninfo string
	mu       sync.Mutex
	conn     *pgconn.PgConn
}

// exec runs SQL over the simple protocol, connecting first when needed.
func (c *nodeConn) exec(ctx context.Context, sql string) ([]*pgconn.Result, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.connect(ctx); err != nil {
		return nil, err
	}
	res, err := c.conn.Exec(ctx, sql).ReadAll()
	if err != nil {
		c.broken(err)
		return nil, err
	}
	return res, nil
}

func newObserver() *observer {
	return &observer{relays: map[string]relayObs{}, sql: map[string]sqlObs{},
		repoints: map[string]repointMark{}, conns: map[string]*nodeConn{}, kick: make(chan struct{}, 1),
		primarySeen: map[string]time.Time{}, primarySync: map[string]string{}}
}

// maxSamples bounds the primary's position history: lag in time is only
// resolved up to this many sampling intervals (10 minutes at 1 s).
const maxSamples = 600

func (o *observer) noteRelay(name string, rep RelayReport) []SlotWant {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.relays[name] = relayObs{at: time.Now(), rep: rep}
	return o.wants
}

func (o *observer) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, c := range o.conns {
		c.close()
	}
	o.conns = map[string]*nodeConn{}
	o.sql = map[string]sqlObs{}
	o.relays = map[string]relayObs{}
	o.primary = nil
	o.wants = nil
}

// observe runs observeOnce every interval while this member leads.
func (m *Manager) observe(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	defer m.obs.reset()
	leading := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-m.obs.kick:
			// Placement just moved nodes: re-point standbys now rather
			// than at the next tick.
		}
		if m.raft.State() != raft.Leader {
			if leading {
				m.obs.reset()
				leading = false
			}
			continue
		}
		if !leading {
			m.obs.mu.Lock()
			m.obs.leadingSince = time.Now()
			m.obs.mu.Unlock()
		}
		leading = true
		m.observeOnce(ctx)
	}
}

// observeOnce reads every managed PostgreSQL node, re-points standbys whose
// parent changed and recomputes the slots relays must hold.
func (m *Manager) observeOnce(ctx context.Context) {
	tree := m.fsm.Tree()
	var wg sync.WaitGroup
	results := make(map[string]sqlObs)
	var rmu sync.Mutex
	for _, name := range tree.Names() {
		n := tree.Nodes[name]
		if n.Conninfo == "" || (n.Kind != KindStandby && name != tree.Primary) || n.State == StateFenced {
			continue
		}
		nc := m.obs.conn(name, n.Conninfo)
		wg.Add(1)
		go func() {
			defer wg.Done()
			qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			st, err := nc.query(qctx)
			rmu.Lock()
			results[name] = sqlObs{at: time.Now(), st: st, err: err}
			rmu.Unlock()
		}()
	}
	wg.Wait()

	m.obs.mu.Lock()
	for name, r := range results {
		m.obs.sql[name] = r
		if name == tree.Primary && r.err == nil && !r.st.InRecovery {
			m.obs.primarySeen[name] = r.at
			m.obs.primarySync[name] = r.st.SyncStandbyNames
		}
		if name == tree.Primary && r.err == nil && r.st.CurrentLSN != 0 {
			m.obs.primary = append(m.obs.primary, lsnSample{at: r.at, lsn: r.st.CurrentLSN})
			if len(m.obs.primary) > maxSamples {
				m.obs.primary = m.obs.primary[len(m.obs.primary)-maxSamples:]
			}
		}
	}
	for name := range m.obs.sql {
		if _, ok := tree.Nodes[name]; !ok {
			delete(m.obs.sql, name)
		}
	}
	relays := make(map[string]relayObs, len(m.obs.relays))
	for k, v := range m.obs.relays {
		relays[k] = v
	}
	m.obs.wants = slotWants(tree, results)
	m.obs.mu.Unlock()

	for _, name := range tree.Names() {
		n := tree.Nodes[name]
		r, ok := results[name]
		if n.Kind != KindStandby || n.External || !ok || r.err != nil || !r.st.InRecovery {
			continue
		}
		if err := m.repointStandby(ctx, tree, n, r.st, relays); err != nil {
			m.log.Warn("cannot re-point standby", "standby", name, "parent", n.Parent, "err", err)
		}
	}
}

// slotWants: every managed standby with a primary_slot_name gets that slot
// on every relay, held from the start of the segment it is replaying (where
// its WAL receiver would ask to start after a reconnect).
func slotWants(tree *Tree, results map[string]sqlObs) []SlotWant {
	var out []SlotWant
	for _, name := range tree.Names() {
		n := tree.Nodes[name]
		r, ok := results[name]
		if n.Kind != KindStandby || !ok || r.err != nil || r.st.PrimarySlot == "" || r.st.ReplayLSN == 0 {
			continue
		}
		pos := r.st.ReplayLSN
		if r.st.ReceiveLSN != 0 && r.st.ReceiveLSN < pos {
			pos = r.st.ReceiveLSN
		}
		if seg := r.st.SegmentSize; seg > 0 {
			pos -= walstream.LSN(uint64(pos) % seg)
		}
		out = append(out, SlotWant{Name: r.st.PrimarySlot, RestartLSN: pos, Standby: name})
	}
	return out
}

// repointStandby aims a standby's primary_conninfo at its assigned parent
// (ALTER SYSTEM + pg_reload_conf: no restart since PostgreSQL 13). When the
// standby streams through a slot, the move waits until the new parent
// reports holding it.
func (m *Manager) repointStandby(ctx context.Context, tree *Tree, n *Node, st sqlStatus, relays map[string]relayObs) error {
	parent := tree.Nodes[n.Parent]
	if parent == nil || parent.State != StateAlive || parent.Conninfo == "" {
		return nil
	}
	if sameEndpoint(st.PrimaryConninfo, parent.Conninfo) {
		return nil
	}
	target, err := repoint(st.PrimaryConninfo, parent.Conninfo)
	if err != nil {
		return err
	}
	m.obs.mu.Lock()
	mark := m.obs.repoints[n.Name]
	m.obs.mu.Unlock()
	if mark.target == target && time.Since(mark.at) < 10*time.Second {
		return nil // issued; the reload may not have been seen yet
	}
	if slot := st.PrimarySlot; slot != "" {
		switch parent.Kind {
		case KindRelay:
			if !contains(relays[parent.Name].rep.Slots, slot) {
				m.log.Info("waiting for the new parent to hold the standby's slot", "standby", n.Name, "parent", parent.Name, "slot", slot)
				return nil
			}
		case KindPrimary:
			if err := m.obs.conn(parent.Name, parent.Conninfo).ensurePrimarySlot(ctx, slot); err != nil {
				return fmt.Errorf("create slot %s on the primary: %w", slot, err)
			}
		}
	}
	nc := m.obs.conn(n.Name, n.Conninfo)
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	sql := "ALTER SYSTEM SET primary_conninfo = " + quoteLiteral(target)
	if _, err := nc.exec(qctx, sql); err != nil {
		return fmt.Errorf("ALTER SYSTEM: %w", err)
	}
	if _, err := nc.exec(qctx, "SELECT pg_reload_conf()"); err != nil {
		return fmt.Errorf("pg_reload_conf: %w", err)
	}
	m.obs.mu.Lock()
	m.obs.repoints[n.Name] = repointMark{target: target, at: time.Now()}
	m.obs.mu.Unlock()
	m.log.Info("re-pointed standby", "standby", n.Name, "parent", parent.Name, "from", st.Sender, "slot", st.PrimarySlot)
	return nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func quoteLiteral(s string) string {
	return "'" + strings.ReplaceAll(s, "'", "''") + "'"
}

// conn returns the cached connection holder for a node, replacing it when
// the node's conninfo changed.
func (o *observer) conn(name, conninfo string) *nodeConn {
	o.mu.Lock()
	defer o.mu.Unlock()
	c := o.conns[name]
	if c != nil && c.conninfo != conninfo {
		c.close()
		c = nil
	}
	if c == nil {
		c = &nodeConn{conninfo: conninfo}
		o.conns[name] = c
	}
	return c
}

func (c *nodeConn) close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.conn != nil {
		closeConn(c.conn)
		c.conn = nil
	}
}

func (c *nodeConn) broken(err error) {
	// An SQL error leaves the session usable; anything else (a timeout,
	// a broken socket) gets a new connection next round.
	var pgErr *pgconn.PgError
	if c.conn != nil && (c.conn.IsClosed() || !errors.As(err, &pgErr)) {
		closeConn(c.conn)
		c.conn = nil
	}
}

func (c *nodeConn) connect(ctx context.Context) error {
	if c.conn != nil && !c.conn.IsClosed() {
		return nil
	}
	cfg, err := pgconn.ParseConfig(c.conninfo)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["application_name"] = "walrelay-manager"
	conn, err := pgconn.ConnectConfig(ctx, cfg)
	if err != nil {
		return err
	}
	c.conn = conn
	return nil
}

const statusSQL = `SELECT pg_is_in_recovery(),
 COALESCE(pg_last_wal_receive_lsn()::text, ''),
 COALESCE(pg_last_wal_replay_lsn()::text, ''),
 CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_current_wal_lsn()::text END,
 CASE WHEN pg_is_in_recovery()
   THEN COALESCE((SELECT received_tli::text FROM pg_stat_wal_receiver), (SELECT timeline_id::text FROM pg_control_checkpoint()))
   ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int::text END,
 COALESCE((SELECT status FROM pg_stat_wal_receiver), ''),
 COALESCE((SELECT sender_host || ':' || sender_port FROM pg_stat_wal_receiver), ''),
 current_setting('primary_conninfo'),
 current_setting('primary_slot_name'),
 (SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'),
 current_setting('synchronous_standby_names')`

func (c *nodeConn) query(ctx context.Context) (sqlStatus, error) {
	res, err := c.exec(ctx, statusSQL)
	if err != nil {
		return sqlStatus{}, err
	}
	if len(res) != 1 || len(res[0].Rows) != 1 || len(res[0].Rows[0]) != 11 {
		return sqlStatus{}, fmt.Errorf("status query: unexpected result shape")
	}
	row := res[0].Rows[0]
	var st sqlStatus
	st.InRecovery = string(row[0]) == "t"
	lsn := func(b []byte) walstream.LSN {
		if len(b) == 0 {
			return 0
		}
		l, _ := walstream.ParseLSN(string(b))
		return l
	}
	st.ReceiveLSN, st.ReplayLSN, st.CurrentLSN = lsn(row[1]), lsn(row[2]), lsn(row[3])
	if tli, err := strconv.ParseUint(string(row[4]), 10, 32); err == nil {
		st.Timeline = uint32(tli)
	}
	st.ReceiverStatus, st.Sender = string(row[5]), string(row[6])
	st.PrimaryConninfo, st.PrimarySlot = string(row[7]), string(row[8])
	st.SegmentSize, _ = strconv.ParseUint(string(row[9]), 10, 64)
	st.SyncStandbyNames = string(row[10])
	return st, nil
}

func (c *nodeConn) ensurePrimarySlot(ctx context.Context, slot string) error {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	q := fmt.Sprintf(`SELECT pg_create_physical_replication_slot(%s, true)
 WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = %s)`, quoteLiteral(slot), quoteLiteral(slot))
	_, err := c.exec(qctx, q)
	return err
}

// status assembles every node's view for GET /v1/status.
func (m *Manager) localStatus() StatusResponse {
	tree := m.fsm.Tree()
	_, leader := m.raft.LeaderWithID()
	now := time.Now()
	m.obs.mu.Lock()
	defer m.obs.mu.Unlock()
	out := StatusResponse{Leader: string(leader), Nodes: map[string]NodeStatus{}}
	var primary walstream.LSN
	if k := len(m.obs.primary); k > 0 {
		primary = m.obs.primary[k-1].lsn
		out.PrimaryLSN = primary
	}
	lag := func(ns *NodeStatus, pos walstream.LSN) {
		if primary == 0 || pos == 0 {
			return
		}
		b, secs := lagBehind(m.obs.primary, pos, now)
		ns.LagBytes, ns.LagSeconds = &b, &secs
	}
	for name, r := range m.obs.sql {
		ns := NodeStatus{AgeSeconds: now.Sub(r.at).Seconds()}
		if r.err != nil {
			ns.Error = r.err.Error()
			out.Nodes[name] = ns
			continue
		}
		st := r.st
		ns.Timeline, ns.InRecovery = st.Timeline, st.InRecovery
		if st.InRecovery {
			ns.ReceiveLSN, ns.ReplayLSN = st.ReceiveLSN, st.ReplayLSN
			ns.Upstream, ns.Streaming, ns.Slot = st.Sender, st.ReceiverStatus == "streaming", st.PrimarySlot
			pos := st.ReplayLSN
			if pos == 0 {
				pos = st.ReceiveLSN
			}
			lag(&ns, pos)
		} else {
			ns.ReceiveLSN, ns.ReplayLSN = st.CurrentLSN, st.CurrentLSN
			if name == tree.Primary {
				zero, zs := uint64(0), 0.0
				ns.LagBytes, ns.LagSeconds = &zero, &zs
			}
		}
		out.Nodes[name] = ns
	}
	for name, r := range m.obs.relays {
		if _, ok := tree.Nodes[name]; !ok {
			continue
		}
		if age := now.Sub(r.at); age > m.cfg.FailureTimeout {
			// A relay that stopped reporting: its last figures would
			// read as current lag.
			out.Nodes[name] = NodeStatus{AgeSeconds: age.Seconds(), Error: fmt.Sprintf("no report for %.0fs", age.Seconds())}
			continue
		}
		rep := r.rep
		ns := NodeStatus{AgeSeconds: now.Sub(r.at).Seconds(), Timeline: rep.Timeline, ReceiveLSN: rep.ReceiveLSN,
			Upstream: rep.Upstream, Streaming: rep.Streaming, Compression: rep.Compression}
		if rep.WireBytes > 0 {
			ns.CompressionRatio = float64(rep.RawBytes) / float64(rep.WireBytes)
		}
		lag(&ns, rep.ReceiveLSN)
		out.Nodes[name] = ns
	}
	return out
}

// closeConn says goodbye within a second: a hung server must not hold up
// the observe loop.
func closeConn(c *pgconn.PgConn) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	c.Close(ctx)
}

// lagBehind measures a node at pos against the primary's position history
// (oldest first, not empty): bytes behind the latest sample, and how long
// ago the primary first wrote past pos (0 when it has not: an idle
// primary's standbys are not lagging, however old their last commit).
func lagBehind(samples []lsnSample, pos walstream.LSN, now time.Time) (bytes uint64, seconds float64) {
	if latest := samples[len(samples)-1].lsn; latest > pos {
		bytes = uint64(latest - pos)
	}
	for _, s := range samples {
		if s.lsn > pos {
			return bytes, now.Sub(s.at).Seconds()
		}
	}
	return bytes, 0
}
