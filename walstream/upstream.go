package walstream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
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
	// URI); replication=true is added.
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
	// StartupParams are sent in the startup packet besides replication and
	// application_name.
	StartupParams map[string]string
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// Validate checks the configuration and fills in defaults.
func (c *UpstreamConfig) Validate() error {
	if c.ConnString == "" {
		return errors.New("upstream connection string is empty")
	}
	if _, err := pgconn.ParseConfig(c.ConnString); err != nil {
		return fmt.Errorf("upstream connection string: %w", err)
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

// UpstreamState is the client's connection state, as shown in /status.
type UpstreamState string

const (
	UpstreamConnecting UpstreamState = "connecting"
	UpstreamStreaming  UpstreamState = "streaming"
	UpstreamBackoff    UpstreamState = "backoff"
	UpstreamRefused    UpstreamState = "refused" // identity mismatch: will not stream
	UpstreamStopped    UpstreamState = "stopped"
)

// UpstreamStatus is a snapshot of the client for status pages.
type UpstreamStatus struct {
	Target    string        `json:"target"`
	State     UpstreamState `json:"state"`
	Slot      string        `json:"slot,omitempty"`
	LastError string        `json:"last_error,omitempty"`
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

	serverEnd atomic.Uint64 // parent's reported flush position
	mu        sync.Mutex
	status    UpstreamStatus
}

// NewUpstream returns a client that feeds store from cfg's parent.
func NewUpstream(cfg UpstreamConfig, store *Store) (*Upstream, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	pc, _ := pgconn.ParseConfig(cfg.ConnString)
	target := fmt.Sprintf("host=%s port=%d user=%s", pc.Host, pc.Port, pc.User)
	u := &Upstream{cfg: cfg, store: store, target: target, m: newUpstreamMetrics(cfg.Registerer)}
	u.status = UpstreamStatus{Target: target, State: UpstreamConnecting, Slot: cfg.Slot, Since: time.Now()}
	return u, nil
}

// Status returns the client's current state.
func (u *Upstream) Status() UpstreamStatus {
	u.mu.Lock()
	defer u.mu.Unlock()
	st := u.status
	st.ServerWALEnd = LSN(u.serverEnd.Load())
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
}

// Run connects, streams and reconnects with backoff until ctx is cancelled.
// It returns nil on cancellation; a store that cannot be written is the only
// error that ends it early.
func (u *Upstream) Run(ctx context.Context) error {
	log := u.cfg.Logger.With("upstream", u.target)
	backoff := u.cfg.MinBackoff
	for {
		u.setState(UpstreamConnecting, nil)
		started := time.Now()
		err := u.stream(ctx, log)
		if ctx.Err() != nil {
			u.setState(UpstreamStopped, nil)
			return nil
		}
		var storeErr *storeError
		if errors.As(err, &storeErr) {
			u.setState(UpstreamStopped, err)
			return err
		}
		state := UpstreamBackoff
		var mismatch *IdentityMismatchError
		if errors.As(err, &mismatch) {
			state = UpstreamRefused
			log.Error("refusing upstream: it is a different cluster", "err", err)
		} else {
			log.Warn("upstream stream ended", "err", err, "retry_in", backoff)
		}
		u.setState(state, err)
		u.m.reconnects.Inc()
		if time.Since(started) > 30*time.Second {
			backoff = u.cfg.MinBackoff
		}
		select {
		case <-ctx.Done():
			u.setState(UpstreamStopped, nil)
			return nil
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, u.cfg.MaxBackoff)
	}
}

// storeError marks failures of the local store, which reconnecting cannot fix.
type storeError struct{ err error }

func (e *storeError) Error() string { return e.err.Error() }
func (e *storeError) Unwrap() error { return e.err }

// stream runs one connection: handshake, then the CopyBoth loop.
func (u *Upstream) stream(ctx context.Context, log *slog.Logger) error {
	pc, err := pgconn.ParseConfig(u.cfg.ConnString)
	if err != nil {
		return err
	}
	pc.RuntimeParams["replication"] = "true"
	if _, ok := pc.RuntimeParams["application_name"]; !ok {
		pc.RuntimeParams["application_name"] = u.cfg.NodeID
	}
	for k, v := range u.cfg.StartupParams {
		pc.RuntimeParams[k] = v
	}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	conn, err := pgconn.ConnectConfig(cctx, pc)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
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
	if err := startCopyBoth(ctx, conn, query); err != nil {
		return fmt.Errorf("%s: %w", query, err)
	}
	hc, err := conn.Hijack()
	if err != nil {
		return err
	}
	defer hc.Conn.Close()
	log.Info("streaming from upstream", "timeline", tli, "start_lsn", start.String(), "slot", u.cfg.Slot)
	u.setState(UpstreamStreaming, nil)
	return u.copyLoop(ctx, hc.Conn, hc.Frontend, tli)
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
	if u.cfg.Slot != "" {
		if err := ensureSlot(ctx, conn, u.cfg.Slot); err != nil {
			return 0, 0, err
		}
	}
	serverTLI := TimeLineID(sys.Timeline)
	tli, end := u.store.WriteEnd()
	if tli == 0 {
		tli, end = serverTLI, LSN(sys.XLogPos).SegmentStart(segSize)
		if err := u.store.StartAt(tli, end); err != nil {
			return 0, 0, &storeError{err}
		}
		log.Info("empty store: starting at the parent's current segment", "timeline", tli, "start_lsn", end.String())
	}
	if tli != serverTLI {
		// Following a parent onto a new timeline is the relay tree's job
		// (history fetch, switch point); until then do not stream WAL of
		// one timeline into another's files.
		return 0, 0, fmt.Errorf("parent is on timeline %d, store is on timeline %d: timeline switches are not supported yet", serverTLI, tli)
	}
	if tli > 1 {
		h, err := pglogrepl.TimelineHistory(ctx, conn, int32(tli))
		if err != nil {
			return 0, 0, fmt.Errorf("TIMELINE_HISTORY %d: %w", tli, err)
		}
		if err := u.store.WriteHistory(tli, h.Content); err != nil {
			return 0, 0, &storeError{err}
		}
	}
	return tli, end, nil
}

// copyLoop writes what the reader goroutine receives, syncs each batch and
// reports positions. It is the only writer to the connection.
func (u *Upstream) copyLoop(ctx context.Context, nc net.Conn, fe *pgproto3.Frontend, tli TimeLineID) error {
	msgs := make(chan upstreamMsg, 64)
	readErr := make(chan error, 1)
	readCtx, stopReader := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		readErr <- readMessages(readCtx, nc, fe, msgs, u.cfg.Timeout)
	}()
	defer func() {
		stopReader()
		nc.Close()
		wg.Wait()
	}()

	ticker := time.NewTicker(u.cfg.StatusInterval)
	defer ticker.Stop()
	var buf []byte
	sendStatus := func() error {
		_, durable := u.store.DurableEnd()
		buf = AppendStandbyStatus(buf[:0], StandbyStatus{
			Write: durable, Flush: durable, Apply: durable, SendTime: PGTime(time.Now()),
		})
		fe.Send(&pgproto3.CopyData{Data: buf})
		if err := fe.Flush(); err != nil {
			return fmt.Errorf("send standby status: %w", err)
		}
		return nil
	}
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-readErr:
			return err
		case <-ticker.C:
			if err := sendStatus(); err != nil {
				return err
			}
		case m := <-msgs:
			reply, wrote := false, false
			var batchBytes int
			for {
				r, w, err := u.apply(tli, m)
				if err != nil {
					return err
				}
				reply, wrote = reply || r, wrote || w
				batchBytes += len(m.data)
				if batchBytes >= maxSyncBatch {
					break
				}
				if len(msgs) > 0 {
					m = <-msgs
					continue
				}
				// A walsender sends a full MaxSendSize message only when more
				// WAL is pending: the next one is already on its way, and
				// one fsync for both costs less than two. At the tip,
				// messages are shorter and are synced at once.
				if len(m.data) < MaxSendSize {
					break
				}
				var ok bool
				if m, ok = nextWithin(msgs, groupCommitWait); !ok {
					break
				}
			}
			if wrote {
				t0 := time.Now()
				if _, err := u.store.Sync(); err != nil {
					return &storeError{err}
				}
				u.m.fsync.Observe(time.Since(t0).Seconds())
			}
			if reply || wrote {
				if err := sendStatus(); err != nil {
					return err
				}
			}
		}
	}
}

const (
	maxSyncBatch    = 4 << 20
	groupCommitWait = 2 * time.Millisecond
)

// nextWithin waits up to d for another message.
func nextWithin(msgs <-chan upstreamMsg, d time.Duration) (upstreamMsg, bool) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case m := <-msgs:
		return m, true
	case <-t.C:
		return upstreamMsg{}, false
	}
}

// apply handles one message; it reports whether a reply was requested and
// whether WAL was written.
func (u *Upstream) apply(tli TimeLineID, m upstreamMsg) (reply, wrote bool, err error) {
	if m.walEnd > LSN(u.serverEnd.Load()) {
		u.serverEnd.Store(uint64(m.walEnd))
	}
	if m.keepalive {
		return m.replyRequested, false, nil
	}
	if err := u.store.Write(tli, m.start, m.data); err != nil {
		return false, false, &storeError{err}
	}
	u.m.received.Add(float64(len(m.data)))
	return false, true, nil
}

type upstreamMsg struct {
	keepalive      bool
	replyRequested bool
	start, walEnd  LSN
	data           []byte
}

// readMessages decodes the parent's CopyBoth stream until an error. It owns
// reads on nc; copies of WAL bytes go to out.
func readMessages(ctx context.Context, nc net.Conn, fe *pgproto3.Frontend, out chan<- upstreamMsg, timeout time.Duration) error {
	for {
		nc.SetReadDeadline(time.Now().Add(timeout))
		msg, err := fe.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return fmt.Errorf("no message from upstream for %s: terminating", timeout)
			}
			return fmt.Errorf("receive: %w", err)
		}
		var m upstreamMsg
		switch msg := msg.(type) {
		case *pgproto3.CopyData:
			if len(msg.Data) == 0 {
				return errors.New("empty CopyData from upstream")
			}
			switch msg.Data[0] {
			case MsgXLogData:
				x, err := ParseXLogData(msg.Data)
				if err != nil {
					return err
				}
				m = upstreamMsg{start: x.DataStart, walEnd: x.WALEnd, data: append([]byte(nil), x.Data...)}
			case MsgKeepalive:
				k, err := ParseKeepalive(msg.Data)
				if err != nil {
					return err
				}
				m = upstreamMsg{keepalive: true, replyRequested: k.ReplyRequested, walEnd: k.WALEnd}
			default:
				return fmt.Errorf("unexpected CopyData message type %q from upstream", msg.Data[0])
			}
		case *pgproto3.CopyDone:
			return errors.New("upstream ended the stream (end of timeline)")
		case *pgproto3.ErrorResponse:
			return pgconn.ErrorResponseToPgError(msg)
		case *pgproto3.NoticeResponse, *pgproto3.ParameterStatus:
			continue
		default:
			return fmt.Errorf("unexpected message %T from upstream", msg)
		}
		select {
		case out <- m:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

type upstreamMetrics struct {
	received   prometheus.Counter
	reconnects prometheus.Counter
	connected  prometheus.Gauge
	fsync      prometheus.Histogram
}

func newUpstreamMetrics(reg prometheus.Registerer) *upstreamMetrics {
	m := &upstreamMetrics{
		received: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walrelay_upstream_received_bytes_total", Help: "WAL bytes received from the parent.",
		}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walrelay_upstream_reconnects_total", Help: "Upstream streams that ended and were retried.",
		}),
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "walrelay_upstream_streaming", Help: "1 while streaming from the parent.",
		}),
		fsync: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "walrelay_store_fsync_seconds", Help: "Time to make a received batch durable.",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2, 16),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.received, m.reconnects, m.connected, m.fsync)
	}
	return m
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
