package walstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/prometheus/client_golang/prometheus"
)

// UpstreamConfig configures the replication client that feeds a Store.
type UpstreamConfig struct {
	// ConnString is the parent's libpq connection string (keyword/value or
	// URI); replication=true is added. Empty: wait for SetConnString (a
	// relay whose parent the managers assign).
	ConnString string
	// NodeID names this relay upstream: application_name and slot name.
	NodeID string
	// Slot is the physical slot to stream from on the parent, created if
	// missing. Empty streams without a slot.
	Slot string
	// StatusInterval is how often positions are reported without being
	// asked (PostgreSQL's wal_receiver_status_interval). Default 10 s.
	StatusInterval time.Duration
	// Timeout ends a silent connection (wal_receiver_timeout). Default 60 s.
	Timeout time.Duration
	// MinBackoff and MaxBackoff bound the reconnect delay. Default 100 ms, 5 s.
	MinBackoff, MaxBackoff time.Duration
	// Compression "zstd" asks the parent for a compressed link; a parent
	// that is not a relay ignores it and sends plain WAL.
	Compression string
	// SyncDelay bounds how long WAL received may wait for more before one
	// fsync covers it all (group commit, like PostgreSQL's commit_delay).
	// Zero syncs as soon as no more input is buffered. It adds up to its
	// value to every hop's latency and saves an fsync per commit under a
	// load of small commits.
	SyncDelay time.Duration
	// Feedback, if set, supplies the hot standby feedback to forward to the
	// parent (the oldest xmin the children's queries need).
	Feedback   FeedbackSource
	Logger     *slog.Logger
	Registerer prometheus.Registerer
}

// Validate checks the configuration and fills in defaults.
func (c *UpstreamConfig) Validate() error {
	if c.ConnString != "" {
		if _, err := pgconn.ParseConfig(c.ConnString); err != nil {
			return fmt.Errorf("upstream connection string: %w", err)
		}
	}
	if c.NodeID == "" {
		return errors.New("node id is empty")
	}
	if c.StatusInterval <= 0 {
		c.StatusInterval = 10 * time.Second
	}
	if c.Timeout <= 0 {
		c.Timeout = 60 * time.Second
	}
	if c.MinBackoff <= 0 {
		c.MinBackoff = 100 * time.Millisecond
	}
	if c.MaxBackoff < c.MinBackoff {
		c.MaxBackoff = max(5*time.Second, c.MinBackoff)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// FeedbackSource reports the hot standby feedback to send upstream; ok is
// false when no child asks to hold back vacuum. It must be cheap and safe
// for concurrent use.
type FeedbackSource interface {
	Feedback() (fb HotStandbyFeedback, ok bool)
}

// UpstreamState is the client's connection state, as shown in /status.
type UpstreamState string

const (
	UpstreamConnecting UpstreamState = "connecting"
	UpstreamStreaming  UpstreamState = "streaming"
	UpstreamBackoff    UpstreamState = "backoff"
	UpstreamRefused    UpstreamState = "refused" // identity mismatch: will not stream
	UpstreamStopped    UpstreamState = "stopped"
	// UpstreamDiskFull: the store ran out of space; retrying until it has
	// room again.
	UpstreamDiskFull UpstreamState = "disk-full"
)

// UpstreamStatus is a snapshot of the client for status pages.
type UpstreamStatus struct {
	Target    string        `json:"target"`
	State     UpstreamState `json:"state"`
	Slot      string        `json:"slot,omitempty"`
	LastError string        `json:"last_error,omitempty"`
	// Compression is "zstd" while the parent sends compressed WAL.
	// ReceivedBytes counts WAL received; ReceivedWireBytes what it took on
	// the wire (message framing included), since the relay started.
	Compression       string `json:"compression,omitempty"`
	ReceivedBytes     uint64 `json:"received_bytes"`
	ReceivedWireBytes uint64 `json:"received_wire_bytes"`
	// ServerWALEnd is the parent's flush position as last reported by it.
	ServerWALEnd LSN       `json:"-"`
	Since        time.Time `json:"since"`
}

// Upstream streams WAL from a parent server into a Store. It is the store's
// only writer. Run it once.
type Upstream struct {
	cfg    UpstreamConfig
	store  *Store
	target string
	m      *upstreamMetrics

	// The parent can change while running (SetConnString); connMu guards
	// these.
	connMu       sync.Mutex
	connString   string
	connChanged  chan struct{}
	cancelStream context.CancelFunc

	serverEnd atomic.Uint64 // parent's reported flush position
	// minTimeline bounds the parent's timeline from below (SetMinTimeline).
	minTimeline atomic.Uint32
	lastFull    bool // the last WAL message was MaxSendSize long (copyLoop only)
	rawBytes    atomic.Uint64
	wireBytes   atomic.Uint64
	mu          sync.Mutex
	status      UpstreamStatus
}

// NewUpstream returns a client that feeds store from cfg's parent.
func NewUpstream(cfg UpstreamConfig, store *Store) (*Upstream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	u := &Upstream{cfg: cfg, store: store, m: newUpstreamMetrics(cfg.Registerer), connChanged: make(chan struct{})}
	u.connString = cfg.ConnString
	u.status = UpstreamStatus{Target: describeTarget(cfg.ConnString), State: UpstreamConnecting, Slot: cfg.Slot, Since: time.Now()}
	return u, nil
}

// describeTarget names a parent without its password.
func describeTarget(connString string) string {
	if connString == "" {
		return ""
	}
	pc, err := pgconn.ParseConfig(connString)
	if err != nil {
		return "(invalid connection string)"
	}
	return fmt.Sprintf("host=%s port=%d user=%s", pc.Host, pc.Port, pc.User)
}

// ConnString is the parent's connection string now in use.
func (u *Upstream) ConnString() string {
	u.connMu.Lock()
	defer u.connMu.Unlock()
	return u.connString
}

// SetConnString switches to another parent: the current stream ends and
// the next one starts from the store's durable end on the new parent, after
// the usual identity and timeline checks.
func (u *Upstream) SetConnString(s string) error {
	if _, err := pgconn.ParseConfig(s); err != nil {
		return fmt.Errorf("upstream connection string: %w", err)
	}
	u.connMu.Lock()
	defer u.connMu.Unlock()
	if s == u.connString {
		return nil
	}
	u.cfg.Logger.Info("switching upstream", "from", describeTarget(u.connString), "to", describeTarget(s))
	u.connString = s
	close(u.connChanged)
	u.connChanged = make(chan struct{})
	if u.cancelStream != nil {
		u.cancelStream()
	}
	return nil
}

// SetMinTimeline refuses parents on a timeline below tli (0: no bound).
// The managers set it to the committed primary's timeline, so an old
// primary answering at the address of the new one is never followed.
func (u *Upstream) SetMinTimeline(tli TimeLineID) { u.minTimeline.Store(uint32(tli)) }

// Status returns the client's current state.
func (u *Upstream) Status() UpstreamStatus {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.status
	st.ServerWALEnd = LSN(u.serverEnd.Load())
	st.ReceivedBytes, st.ReceivedWireBytes = u.rawBytes.Load(), u.wireBytes.Load()
	return st
}

// ServerWALEnd is the newest flush position the parent has reported: WAL up
// to there exists upstream and will reach this relay.
func (u *Upstream) ServerWALEnd() LSN { return LSN(u.serverEnd.Load()) }

func (u *Upstream) setState(st UpstreamState, err error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.status.State != st {
		u.status.Since = time.Now()
	}
	u.status.State = st
	if err != nil {
		u.status.LastError = err.Error()
	}
	u.m.connected.Set(boolFloat(st == UpstreamStreaming))
	if st != UpstreamConnecting {
		u.m.diskFull.Set(boolFloat(st == UpstreamDiskFull))
	}
}

// Run connects, streams and reconnects with backoff until ctx is cancelled.
// It returns nil on cancellation; a store that cannot be written is the only
// error that ends it early.
func (u *Upstream) Run(ctx context.Context) error {
	backoff := u.cfg.MinBackoff
	for {
		u.connMu.Lock()
		conn, changed := u.connString, u.connChanged
		sctx, cancel := context.WithCancel(ctx)
		u.cancelStream = cancel
		u.connMu.Unlock()
		if conn == "" {
			u.setState(UpstreamConnecting, errors.New("waiting for the managers to assign a parent"))
			select {
			case <-ctx.Done():
				cancel()
				u.setState(UpstreamStopped, nil)
				return nil
			case <-changed:
				cancel()
				continue
			}
		}
		target := describeTarget(conn)
		u.mu.Lock()
		u.status.Target = target
		u.mu.Unlock()
		log := u.cfg.Logger.With("upstream", target)
		u.setState(UpstreamConnecting, nil)
		started := time.Now()
		err := u.stream(sctx, log, conn)
		switched := sctx.Err() != nil && ctx.Err() == nil
		cancel()
		if ctx.Err() != nil {
			u.setState(UpstreamStopped, nil)
			return nil
		}
		if switched {
			backoff = u.cfg.MinBackoff
			continue
		}
		var storeErr *storeError
		if errors.As(err, &storeErr) && !IsNoSpace(err) {
			u.setState(UpstreamStopped, err)
			return err
		}
		state, wait := UpstreamBackoff, backoff
		var mismatch *IdentityMismatchError
		var tlErr *TimelineError
		switch {
		case storeErr != nil:
			// Nothing unsynced was published or acknowledged, so the parent
			// still holds everything past the store's durable end (in the
			// slot): stop taking WAL, keep serving what is stored, and retry
			// until space returns.
			state = UpstreamDiskFull
			// Segments completed before the failure are fsynced: publish
			// them, or children would wait for space to see them.
			if _, serr := u.store.Sync(); serr != nil {
				u.setState(UpstreamStopped, serr)
				return &storeError{serr}
			}
			_, durable := u.store.DurableEnd()
			log.Error("WAL store is out of space: not receiving or acknowledging WAL until space is freed",
				"dir", u.store.walDir(), "durable_lsn", durable, "err", err, "retry_in", backoff)
		case errors.Is(err, errTimelineEnded):
			log.Info("upstream ended its timeline; reconnecting to follow the switch")
			wait = 0
		case errors.As(err, &mismatch):
			state = UpstreamRefused
			log.Error("refusing upstream: it is a different cluster", "err", err)
		case errors.As(err, &tlErr):
			state = UpstreamRefused
			log.Error("refusing upstream: its timeline history does not contain this relay's", "err", err)
		default:
			log.Warn("upstream stream ended", "err", err, "retry_in", backoff)
		}
		u.setState(state, err)
		u.m.reconnects.Inc()
		if time.Since(started) > 30*time.Second {
			backoff, wait = u.cfg.MinBackoff, min(wait, u.cfg.MinBackoff)
		}
		u.connMu.Lock()
		changed = u.connChanged
		u.connMu.Unlock()
		select {
		case <-ctx.Done():
			u.setState(UpstreamStopped, nil)
			return nil
		case <-changed:
		case <-time.After(wait):
		}
		if wait > 0 {
			backoff = min(backoff*2, u.cfg.MaxBackoff)
		}
	}
}

// storeError marks failures of the local store, which reconnecting cannot fix.
type storeError struct{ err error }

func (e *storeError) Error() string { return e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

// stream runs one connection: handshake, then the CopyBoth loop.
func (u *Upstream) stream(ctx context.Context, log *slog.Logger, connString string) error {
	params := map[string]string{NodeParam: u.cfg.NodeID}
	if u.cfg.Compression == CompressionZstd {
		params[CompressionParam] = CompressionZstd
	}
	conn, err := connectReplication(ctx, connString, u.cfg.NodeID, params)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())

	tli, start, err := u.handshake(ctx, conn, log)
	if err != nil {
		return err
	}
	query := fmt.Sprintf("START_REPLICATION PHYSICAL %s TIMELINE %d", start, tli)
	if u.cfg.Slot != "" {
		query = fmt.Sprintf("START_REPLICATION SLOT %s PHYSICAL %s TIMELINE %d", quoteIdent(u.cfg.Slot), start, tli)
	}
	cc, release, err := hijackCopy(ctx, conn)
	if err != nil {
		return err
	}
	defer release()
	compressed := conn.ParameterStatus(CompressionParam) == CompressionZstd
	u.mu.Lock()
	u.status.Compression = ""
	if compressed {
		u.status.Compression = CompressionZstd
	}
	u.mu.Unlock()
	if compressed {
		dec, err := NewLinkDecoder()
		if err != nil {
			return err
		}
		defer dec.Close()
		cc.dec = dec
	}
	if err := cc.startCopy(ctx, query); err != nil {
		return fmt.Errorf("%s: %w", query, err)
	}
	log.Info("streaming from upstream", "timeline", tli, "start_lsn", start.String(), "slot", u.cfg.Slot,
		"compression", compressed)
	u.setState(UpstreamStreaming, nil)
	return u.copyLoop(ctx, cc, tli)
}

// handshake identifies the parent, binds the store to it, ensures the slot
// and picks where to start.
func (u *Upstream) handshake(ctx context.Context, conn *pgconn.PgConn, log *slog.Logger) (TimeLineID, LSN, error) {
	sys, err := pglogrepl.IdentifySystem(ctx, conn)
	if err != nil {
		return 0, 0, fmt.Errorf("IDENTIFY_SYSTEM: %w", err)
	}
	sysid, err := parseUint(sys.SystemID)
	if err != nil {
		return 0, 0, fmt.Errorf("IDENTIFY_SYSTEM: system id %q: %w", sys.SystemID, err)
	}
	rows, err := simpleQuery(ctx, conn, "SHOW wal_segment_size")
	if err != nil {
		return 0, 0, fmt.Errorf("SHOW wal_segment_size: %w", err)
	}
	if len(rows) != 1 || len(rows[0]) != 1 {
		return 0, 0, fmt.Errorf("SHOW wal_segment_size: unexpected result shape")
	}
	segSize, err := ParseSegmentSize(string(rows[0][0]))
	if err != nil {
		return 0, 0, err
	}
	if err := u.store.Bind(Identity{SystemID: sysid, SegmentSize: segSize}, conn.ParameterStatus("server_version")); err != nil {
		var mismatch *IdentityMismatchError
		if errors.As(err, &mismatch) {
			return 0, 0, err
		}
		return 0, 0, &storeError{err}
	}
	u.serverEnd.Store(uint64(sys.XLogPos))
	recovered := u.store.TakeRecoveredTail()
	if u.cfg.Slot != "" {
		existed, err := ensureSlot(ctx, conn, u.cfg.Slot)
		if err != nil {
			return 0, 0, err
		}
		if existed && recovered != nil {
			u.checkAcknowledged(ctx, conn, log, recovered)
		}
	}
	serverTLI := TimeLineID(sys.Timeline)
	if min := TimeLineID(u.minTimeline.Load()); serverTLI < min {
		return 0, 0, &TimelineError{fmt.Sprintf("parent is on timeline %d, but the committed primary is on timeline %d: it is not the primary (fenced)", serverTLI, min)}
	}
	tli, end := u.store.WriteEnd()
	if tli == 0 && u.cfg.Slot != "" {
		// Start where the slot now holds WAL: the position read before
		// the slot existed may be in a segment already recycled.
		if again, err := pglogrepl.IdentifySystem(ctx, conn); err == nil {
			sys = again
		}
	}
	if tli == 0 {
		tli, end = serverTLI, LSN(sys.XLogPos).SegmentStart(segSize)
		if err := u.store.StartAt(tli, end); err != nil {
			return 0, 0, &storeError{err}
		}
		log.Info("empty store: starting at the parent's current segment", "timeline", tli, "start_lsn", end.String())
	}
	return u.followTimelines(ctx, conn, log, tli, end, serverTLI)
}

// checkAcknowledged compares the end the store recovered with what this
// relay had acknowledged to its parent as flushed, which the parent keeps as
// its slot's restart_lsn. When fsync did its job the store holds every byte
// acknowledged, and recovery cuts at most a record whose end was never
// written. Anything more means the disk lost acknowledged WAL (fsync lied,
// or the data was damaged): that is said loudly. Nothing doubtful is served
// either way: the store ends at its last valid record and streaming resumes
// there, fetching the rest again from the parent.
func (u *Upstream) checkAcknowledged(ctx context.Context, conn *pgconn.PgConn, log *slog.Logger, rt *RecoveredTail) {
	ack, tli, ok := slotRestart(ctx, conn, u.cfg.Slot)
	if !ok {
		log.Debug("cannot read this relay's slot on the parent to check the recovered WAL against it", "slot", u.cfg.Slot)
		return
	}
	if (tli != 0 && tli != rt.Timeline) || ack < alignUp(rt.End)+recordHeaderLen || ack < rt.NextEnd {
		// Only the record in progress at the acknowledged position, whose
		// end was never flushed, was cut (or less than a record header of
		// it was acknowledged).
		return
	}
	u.m.lostAcknowledged.Inc()
	log.Error("the store lost WAL it had acknowledged to its parent as flushed: the disk did not keep what fsync reported durable, or damaged it; that WAL is fetched again from the parent and nothing after the last valid record is served",
		"acknowledged_lsn", ack.String(), "recovered_lsn", rt.End.String(), "timeline", rt.Timeline, "damage", rt.Damage,
		"lost_bytes", uint64(ack-rt.End))
}

// TimelineError reports a parent whose timeline history does not contain
// the relay's: following it would serve WAL of another history.
type TimelineError struct{ msg string }

func (e *TimelineError) Error() string { return e.msg }

// errTimelineEnded: the parent ended the stream at a timeline switch; the
// next handshake follows it.
var errTimelineEnded = errors.New("upstream ended the timeline")

// followTimelines brings the store onto the parent's timeline. It stores
// every history file up to the parent's, and for each timeline the store
// has finished it switches to the next; a timeline not yet received up to
// its switch point is streamed first (the parent ends it there).
func (u *Upstream) followTimelines(ctx context.Context, conn *pgconn.PgConn, log *slog.Logger, tli TimeLineID, end LSN, serverTLI TimeLineID) (TimeLineID, LSN, error) {
	if tli > serverTLI {
		return 0, 0, &TimelineError{fmt.Sprintf("parent is on timeline %d, behind this relay's timeline %d", serverTLI, tli)}
	}
	var history []HistoryEntry
	for t := tli + 1; t <= serverTLI; t++ {
		h, err := pglogrepl.TimelineHistory(ctx, conn, int32(t))
		if err != nil {
			return 0, 0, fmt.Errorf("TIMELINE_HISTORY %d: %w", t, err)
		}
		if err := u.store.WriteHistory(t, h.Content); err != nil {
			return 0, 0, &storeError{err}
		}
		if t == serverTLI {
			if history, err = ParseHistory(h.Content); err != nil {
				return 0, 0, fmt.Errorf("parent's history of timeline %d: %w", t, err)
			}
		}
	}
	if tli > 1 && tli == serverTLI {
		// Also keep the current timeline's history for our children.
		if _, ok := u.store.History(tli); !ok {
			h, err := pglogrepl.TimelineHistory(ctx, conn, int32(tli))
			if err != nil {
				return 0, 0, fmt.Errorf("TIMELINE_HISTORY %d: %w", tli, err)
			}
			if err := u.store.WriteHistory(tli, h.Content); err != nil {
				return 0, 0, &storeError{err}
			}
		}
	}
	for tli < serverTLI {
		next, switchPoint, ok := NextTimeline(history, serverTLI, tli)
		if !ok {
			return 0, 0, &TimelineError{fmt.Sprintf("timeline %d of this relay is not in the history of the parent's timeline %d", tli, serverTLI)}
		}
		if end < switchPoint {
			log.Info("streaming the rest of an old timeline before switching", "timeline", tli, "start_lsn", end.String(), "switch_lsn", switchPoint.String())
			return tli, end, nil
		}
		if err := u.store.SwitchTimeline(next, switchPoint); err != nil {
			return 0, 0, &storeError{err}
		}
		log.Info("following timeline switch", "from_timeline", tli, "to_timeline", next, "switch_lsn", switchPoint.String(),
			"held_beyond_switch", uint64(end-switchPoint))
		tli, end = next, switchPoint.SegmentStart(u.store.segmentSize())
	}
	return tli, end, nil
}

// copyLoop receives WAL, writes it, and fsyncs and reports a batch once no
// more input is buffered or the batch is large. One goroutine reads and
// writes the connection.
func (u *Upstream) copyLoop(ctx context.Context, cc *copyConn, tli TimeLineID) error {
	var status []byte
	var lastFeedback HotStandbyFeedback // what the parent holds for us; zero = none
	feedbackSent := false               // a slot keeps xmin across connections: always send once
	sendStatus := func() error {
		_, durable := u.store.DurableEnd()
		now := PGTime(time.Now())
		status = AppendStandbyStatus(status[:0], StandbyStatus{
			Write: durable, Flush: durable, Apply: durable, SendTime: now,
		})
		if err := cc.send('d', status); err != nil {
			return fmt.Errorf("send standby status: %w", err)
		}
		if u.cfg.Feedback == nil {
			return nil
		}
		// Like a walreceiver: send feedback when it changes, and an
		// all-zero message to release what the parent holds once no child
		// needs it.
		fb, ok := u.cfg.Feedback.Feedback()
		if !ok {
			fb = HotStandbyFeedback{}
		}
		fb.SendTime = 0
		if feedbackSent && fb == lastFeedback {
			return nil
		}
		lastFeedback, feedbackSent = fb, true
		fb.SendTime = now
		if err := cc.send('d', AppendHotStandbyFeedback(status[:0], fb)); err != nil {
			return fmt.Errorf("send hot standby feedback: %w", err)
		}
		return nil
	}
	lastRecv := time.Now()
	nextStatus := lastRecv.Add(u.cfg.StatusInterval)
	var pending, reply bool // written but not synced; parent asked for a reply
	var pendingSince time.Time
	var batch int
	for {
		deadline := lastRecv.Add(u.cfg.Timeout)
		if nextStatus.Before(deadline) {
			deadline = nextStatus
		}
		if pending && !cc.buffered() {
			// Nothing more is here yet. A full-size message means the
			// parent has more pending: give it a moment so one fsync
			// covers both, unless the batch is already large.
			deadline = time.Now()
			if batch < maxSyncBatch && u.lastFull {
				deadline = deadline.Add(groupCommitWait)
			}
			if d := pendingSince.Add(u.cfg.SyncDelay); batch < maxSyncBatch && d.After(deadline) {
				deadline = d
			}
		}
		typ, body, err := cc.next(deadline)
		now := time.Now()
		switch {
		case err == nil:
			lastRecv = now
		case isTimeout(err) && ctx.Err() == nil:
			if pending {
				if err := u.sync(); err != nil {
					return err
				}
				pending, batch, reply = false, 0, true
			}
			if now.Sub(lastRecv) >= u.cfg.Timeout {
				return fmt.Errorf("no message from upstream for %s: terminating", u.cfg.Timeout)
			}
			if reply || !now.Before(nextStatus) {
				if err := sendStatus(); err != nil {
					return err
				}
				reply, nextStatus = false, now.Add(u.cfg.StatusInterval)
			}
			continue
		case ctx.Err() != nil:
			return ctx.Err()
		default:
			return fmt.Errorf("receive: %w", err)
		}
		switch typ {
		case 'd':
			n, r, err := u.handleCopyData(cc, tli, body)
			if err != nil {
				return err
			}
			if n > 0 {
				if !pending {
					pendingSince = now
				}
				pending = true
				batch += n
			}
			if r && pending {
				// Answer at once, as a walreceiver does, with what is
				// durable so far: the batch may take long to complete.
				if err := sendStatus(); err != nil {
					return err
				}
				nextStatus = now.Add(u.cfg.StatusInterval)
				r = false
			}
			reply = reply || r
		case 'c':
			return errTimelineEnded
		case 'E':
			var er pgproto3.ErrorResponse
			if err := er.Decode(body); err != nil {
				return err
			}
			return pgconn.ErrorResponseToPgError(&er)
		case 'N', 'S':
		default:
			return fmt.Errorf("unexpected message %q from upstream", typ)
		}
		if pending && batch >= maxSyncBatch {
			// A long burst (catching up) may never leave the read buffer
			// empty: publish and report as it goes, so children get the
			// WAL and the parent hears from us within its timeout.
			if err := u.sync(); err != nil {
				return err
			}
			pending, batch = false, 0
		}
		if !pending && (reply || !now.Before(nextStatus)) {
			if err := sendStatus(); err != nil {
				return err
			}
			reply, nextStatus = false, now.Add(u.cfg.StatusInterval)
		}
	}
}

// sync makes the written batch durable and publishes it.
func (u *Upstream) sync() error {
	t0 := time.Now()
	if _, err := u.store.Sync(); err != nil {
		return &storeError{err}
	}
	u.m.fsync.Observe(time.Since(t0).Seconds())
	return nil
}

// handleCopyData applies one CopyData payload: WAL is written to the store
// from the read buffer; it returns the WAL bytes written and whether the
// parent asked for a reply.
func (u *Upstream) handleCopyData(cc *copyConn, tli TimeLineID, b []byte) (int, bool, error) {
	if len(b) == 0 {
		return 0, false, errors.New("empty CopyData from upstream")
	}
	switch b[0] {
	case MsgCompressedXLogData:
		if cc.dec == nil {
			return 0, false, errors.New("compressed WAL from an upstream that did not agree to compress")
		}
		z, err := ParseCompressedXLogData(b)
		if err != nil {
			return 0, false, err
		}
		data, err := cc.dec.Decompress(z.Payload, z.RawLen)
		if err != nil {
			return 0, false, fmt.Errorf("WAL at %s: %w", z.DataStart, err)
		}
		return u.writeWAL(tli, z.DataStart, z.WALEnd, data, len(b)+5)
	case MsgXLogData:
		x, err := ParseXLogData(b)
		if err != nil {
			return 0, false, err
		}
		return u.writeWAL(tli, x.DataStart, x.WALEnd, x.Data, len(b)+5)
	case MsgKeepalive:
		k, err := ParseKeepalive(b)
		if err != nil {
			return 0, false, err
		}
		u.noteServerEnd(k.WALEnd)
		return 0, k.ReplyRequested, nil
	default:
		return 0, false, fmt.Errorf("unexpected CopyData message type %q from upstream", b[0])
	}
}

// writeWAL stores one message's WAL; wire is what the message took on the
// wire.
func (u *Upstream) writeWAL(tli TimeLineID, start, walEnd LSN, data []byte, wire int) (int, bool, error) {
	u.noteServerEnd(walEnd)
	if err := u.store.Write(tli, start, data); err != nil {
		return 0, false, &storeError{err}
	}
	u.lastFull = len(data) == MaxSendSize
	u.m.received.Add(float64(len(data)))
	u.m.receivedWire.Add(float64(wire))
	u.rawBytes.Add(uint64(len(data)))
	u.wireBytes.Add(uint64(wire))
	return len(data), false, nil
}

func (u *Upstream) noteServerEnd(end LSN) {
	if end > LSN(u.serverEnd.Load()) {
		u.serverEnd.Store(uint64(end))
	}
}

const (
	maxSyncBatch    = 4 << 20
	groupCommitWait = 2 * time.Millisecond
)

type upstreamMetrics struct {
	received         prometheus.Counter
	receivedWire     prometheus.Counter
	reconnects       prometheus.Counter
	connected        prometheus.Gauge
	lostAcknowledged prometheus.Counter
	diskFull         prometheus.Gauge
	fsync            prometheus.Histogram
}

func newUpstreamMetrics(reg prometheus.Registerer) *upstreamMetrics {
	m := &upstreamMetrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walrelay_upstream_received_bytes_total", Help: "WAL bytes received from the parent.",
		}),
		receivedWire: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walrelay_upstream_received_wire_bytes_total", Help: "Bytes received from the parent for WAL, compressed or not, with framing.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walrelay_upstream_reconnects_total", Help: "Upstream streams that ended and were retried.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "walrelay_upstream_streaming", Help: "1 while streaming from the parent.",
		}),
		diskFull: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "walrelay_store_disk_full", Help: "1 while the WAL store is out of space and the relay has stopped receiving WAL.",
		}),
		lostAcknowledged: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walrelay_store_lost_acknowledged_total",
			Help: "Restarts that found WAL gone from the store that had been acknowledged to the parent as flushed (the disk did not keep what fsync reported).",
		}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "walrelay_store_fsync_seconds", Help: "Time to make a received batch durable.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.received, m.receivedWire, m.reconnects, m.connected, m.diskFull, m.lostAcknowledged, m.fsync)
	}
	return m
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
