package relay

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/walrelay/walrelay/internal/vfs"
	"log/slog"
	"net"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/time/rate"

	"github.com/walrelay/walrelay/internal/feed"
	"github.com/walrelay/walrelay/walstream"
)

// WALSource is the relay's view of its local WAL: what the segment store
// offers. All methods are safe for concurrent use.
type WALSource interface {
	// Identity is the upstream's system identifier and segment size; false
	// until the relay has talked to its upstream once.
	Identity() (walstream.Identity, bool)
	// ServerVersion is the upstream's server_version.
	ServerVersion() string
	// DurableEnd is how far WAL is fsynced and may be served.
	DurableEnd() (walstream.TimeLineID, walstream.LSN)
	// Wait returns a channel closed when the durable end next moves.
	Wait() <-chan struct{}
	// Read returns durable WAL from lsn, at most len(buf) bytes and never
	// across a segment boundary: a read-only view of memory, pinned until
	// the View is released, or buf filled from disk; empty when nothing
	// past lsn is durable. A segment not held gives an error matching
	// walstream.ErrWALRemoved.
	Read(tli walstream.TimeLineID, lsn walstream.LSN, buf []byte) ([]byte, walstream.View, error)
	// OldestLSN is the first position held on tli.
	OldestLSN(tli walstream.TimeLineID) (walstream.LSN, bool)
	// History returns a stored timeline history file.
	History(tli walstream.TimeLineID) ([]byte, bool)
}

// UpstreamProgress reports how far the relay's parent is: WAL up to there
// exists and is on its way.
type UpstreamProgress interface {
	ServerWALEnd() walstream.LSN
}

// Backfiller fetches WAL older than the source holds from the relay's
// parent into the source (read-through). Fetch blocks until the source
// holds tli from from's segment on, or fails; an error matching
// walstream.ErrWALRemoved means no ancestor has it.
type Backfiller interface {
	Fetch(ctx context.Context, tli walstream.TimeLineID, from walstream.LSN) error
	// Refetch replaces a held segment found corrupt with a fresh copy.
	Refetch(ctx context.Context, tli walstream.TimeLineID, segNo uint64) error
}

// Config configures a Server.
type Config struct {
	NodeID string
	Source WALSource
	// Upstream lets a client that asks for WAL a little ahead of the relay
	// wait for it instead of getting an error. May be nil.
	Upstream UpstreamProgress
	// Backfill, if set, serves requests for WAL older than the source holds
	// by fetching it from upstream first.
	Backfill Backfiller
	// UpstreamConnString returns the parent's connection string, used to
	// pass commands through (BASE_BACKUP, UPLOAD_MANIFEST, ...); nil or ""
	// refuses them.
	UpstreamConnString func() string
	// MirrorSlots creates each persistent slot a client creates through the
	// relay on the nearest PostgreSQL ancestor too, and holds that slot
	// active, at the client's flush position, while the client streams with
	// it: tools that check their slot with SQL on the primary (Barman) see
	// it as they would without the relay. Needs UpstreamConnString.
	MirrorSlots bool
	// Credentials are the SCRAM users. Without Rules: none trusts loopback
	// clients only, some require SCRAM from everyone.
	Credentials *Credentials
	// Rules are the access rules (nil: the default above); SetRules
	// replaces them live.
	Rules Rules
	// TLS, when set, lets clients negotiate TLS (SSLRequest); nil answers
	// 'N' and the client goes on in plain text or gives up.
	TLS *TLSReloader
	// MaxConnections bounds all client connections (default 500);
	// MaxConnectionsPerUser those of one user (0: no bound).
	MaxConnections        int
	MaxConnectionsPerUser int
	// MaxCatchupRate bounds, in bytes per second, what one child far
	// behind the tip is sent; MaxCatchupRateTotal what all of them are
	// sent together. 0: no bound. Children at the tip are never limited.
	MaxCatchupRate      int64
	MaxCatchupRateTotal int64
	// StartupTimeout bounds the whole startup (TLS, startup packet,
	// authentication), as authentication_timeout does. Default 10 s.
	StartupTimeout time.Duration
	// FeedbackFrom selects the children whose hot standby feedback is
	// forwarded upstream (zero value: none; see ParseFeedbackPolicy).
	FeedbackFrom FeedbackPolicy
	// SlotDir holds the relay-local replication slots.
	SlotDir string
	// SenderTimeout is wal_sender_timeout: a client silent this long is
	// disconnected, and asked for a reply at half of it. Default 60 s.
	SenderTimeout time.Duration
	// ReplyInterval asks a streaming child for a status reply when it has
	// sent none for this long, so that its replay position (the replica
	// feed) stays fresh on an idle link; a standby otherwise reports every
	// wal_receiver_status_interval (10 s). Default 1 s; negative: never
	// (only at half of SenderTimeout, as a walsender does).
	ReplyInterval time.Duration
	// ShutdownGrace bounds how long Shutdown waits for children to confirm
	// the last WAL sent. Default 5 s.
	ShutdownGrace time.Duration
	Logger        *slog.Logger
	Registerer    prometheus.Registerer
}

// Validate checks the configuration and fills in defaults.
func (c *Config) Validate() error {
	if c.NodeID == "" {
		return errors.New("relay: node id is empty")
	}
	if c.Source == nil {
		return errors.New("relay: no WAL source")
	}
	if c.SlotDir == "" {
		return errors.New("relay: slot directory is empty")
	}
	if c.SenderTimeout <= 0 {
		c.SenderTimeout = 60 * time.Second
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = 5 * time.Second
	}
	if c.ReplyInterval == 0 {
		c.ReplyInterval = time.Second
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = 500
	}
	if c.StartupTimeout <= 0 {
		c.StartupTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Server speaks the PostgreSQL streaming replication protocol to children:
// standbys, pg_receivewal, other relays. Each connection is a session with
// its own goroutines; a slow or broken one affects only itself.
type Server struct {
	cfg   Config
	rules atomic.Pointer[Rules]
	log   *slog.Logger
	slots *slotStore
	m     *serverMetrics

	nextPID atomic.Int32

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	sessions  map[*session]struct{}
	// refused counts the sessions in sessions that admit turned away:
	// they only write their error and go, and hold no place meanwhile.
	refused int
	closing bool
	wg      sync.WaitGroup

	// catchup hands out turns to children far behind the tip (see
	// session.writeBatch).
	catchup chan struct{}
	// catchupTotal bounds all catching-up children together (nil: none).
	catchupTotal *rate.Limiter

	// stopStreams is closed by Shutdown: streaming sessions finish sending
	// what is durable and end the stream the way a walsender does.
	stopStreams chan struct{}
	stopOnce    sync.Once

	feed feedState

	// cast compresses WAL once for the compressed children following it.
	cast *linkCast
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("relay: server closed")

// NewServer returns a server; call Serve to accept connections.
func NewServer(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	slots, err := openSlotStore(vfs.OS(), cfg.SlotDir, cfg.Logger)
	if err != nil {
		return nil, err
	}
	s := &Server{
		cfg:          cfg,
		log:          cfg.Logger,
		slots:        slots,
		m:            newServerMetrics(cfg.Registerer),
		listeners:    make(map[net.Listener]struct{}),
		sessions:     make(map[*session]struct{}),
		stopStreams:  make(chan struct{}),
		catchup:      make(chan struct{}, max(1, runtime.GOMAXPROCS(0)/2)),
		catchupTotal: newByteLimiter(cfg.MaxCatchupRateTotal),
		feed:         feedState{hist: feed.NewHistory(6000)},
	}
	s.cast = &linkCast{compressed: s.m.linkCompressed}
	// Backend PIDs name clients' temporary slots (pg_basebackup_<pid>); a
	// random base keeps them apart across relay restarts.
	var b [2]byte
	rand.Read(b[:])
	s.nextPID.Store(int32(100000 + int(binary.BigEndian.Uint16(b[:]))*10))
	if cfg.Registerer != nil {
		cfg.Registerer.MustRegister(newStateCollector(s))
	}
	s.SetRules(cfg.Rules)
	return s, nil
}

// Serve accepts connections on ln until Shutdown, and returns
// ErrServerClosed then.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
	}()
	var delay time.Duration
	for {
		conn, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept on %s: %w", ln.Addr(), err)
		}
		delay = 0
		s.startSession(conn)
	}
}

func (s *Server) startSession(conn net.Conn) {
	sess := newSession(s, conn, s.nextPID.Add(1))
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		conn.Close()
		return
	}
	s.sessions[sess] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	s.m.connections.Inc()
	go func() {
		defer s.wg.Done()
		defer s.m.connections.Dec()
		sess.run()
		s.mu.Lock()
		delete(s.sessions, sess)
		if sess.refused {
			s.refused--
		}
		s.mu.Unlock()
	}()
}

// Shutdown stops accepting, lets streaming children receive what is durable
// and ends their streams, then closes every connection. It returns when all
// sessions are gone or ctx ends (then remaining connections are closed).
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	s.stopOnce.Do(func() { close(s.stopStreams) })
	// Sessions not streaming have nothing to finish: close them now.
	for sess := range s.sessions {
		if !sess.isStreaming() {
			sess.raw.Close()
		}
	}
	s.mu.Unlock()

	done := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(done)
	}()
	// Streaming children get a grace period to confirm the last WAL.
	grace := time.NewTimer(s.cfg.ShutdownGrace)
	defer grace.Stop()
	var err error
	select {
	case <-done:
	case <-grace.C:
	case <-ctx.Done():
		err = ctx.Err()
	}
	s.mu.Lock()
	for sess := range s.sessions {
		sess.raw.Close()
	}
	s.mu.Unlock()
	<-done
	s.cast.close()
	if ferr := s.slots.flush(); ferr != nil && err == nil {
		err = ferr
	}
	return err
}

// Sessions returns a snapshot of every connected client.
func (s *Server) Sessions() []SessionStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]SessionStatus, 0, len(s.sessions))
	for sess := range s.sessions {
		if st, ok := sess.status(); ok {
			out = append(out, st)
		}
	}
	return out
}

// Slots returns the relay-local replication slots.
func (s *Server) Slots() []SlotStatus { return s.slots.list() }

// OldestNeeded returns the oldest position any slot or streaming child still
// needs, so retention keeps it; false when nothing pins WAL.
func (s *Server) OldestNeeded() (walstream.LSN, bool) {
	oldest, ok := s.slots.oldest()
	s.mu.Lock()
	defer s.mu.Unlock()
	for sess := range s.sessions {
		if p, held := sess.pinned(); held && (!ok || p < oldest) {
			oldest, ok = p, true
		}
	}
	return oldest, ok
}

type serverMetrics struct {
	connections      prometheus.Gauge
	sentBytes        prometheus.Counter
	sentWireBytes    prometheus.Counter
	sessions         *prometheus.CounterVec
	slotsInvalidated prometheus.Counter
	corrupt          prometheus.Counter
	storeBytes       prometheus.Gauge
	linkCompressed   prometheus.Counter
}

func newServerMetrics(reg prometheus.Registerer) *serverMetrics {
	m := &serverMetrics{
		connections: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "walrelay_downstream_connections", Help: "Connected downstream clients.",
		}),
		sentBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walrelay_downstream_sent_bytes_total", Help: "WAL bytes sent to downstream clients.",
		}),
		sentWireBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walrelay_downstream_sent_wire_bytes_total", Help: "Bytes written to downstream clients for WAL, after compression, with framing.",
		}),
		slotsInvalidated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walrelay_slots_invalidated_total", Help: "Relay-local slots invalidated because their WAL exceeded --max-retained-size.",
		}),
		corrupt: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walrelay_store_corrupt_frames_total", Help: "Compressed frames that failed their checksum when read; the segment is fetched again.",
		}),
		storeBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "walrelay_store_bytes", Help: "Bytes of WAL segment files held by the relay.",
		}),
		linkCompressed: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "walrelay_link_compressed_bytes_total",
			Help: "WAL bytes compressed for compressed child links; WAL that several children follow together is compressed once.",
		}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "walrelay_downstream_sessions_total", Help: "Downstream connections by how they ended.",
		}, []string{"result"}),
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.sentBytes, m.sentWireBytes, m.sessions, m.slotsInvalidated, m.corrupt, m.storeBytes, m.linkCompressed)
	}
	return m
}

// SetRules replaces the access rules for new connections (nil: the
// default).
func (s *Server) SetRules(r Rules) {
	if r == nil {
		s.rules.Store(nil)
		return
	}
	s.rules.Store(&r)
}

// admit applies the connection limits once the user is known: PostgreSQL's
// max_connections and per-role connection limit.
func (s *Server) admit(sess *session, user string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	refuse := func(err error) error {
		// A client told "too many" may try again at once, and a
		// place another client freed must be free then.
		sess.refused = true
		s.refused++
		s.m.sessions.WithLabelValues("too_many").Inc()
		return err
	}
	if len(s.sessions)-s.refused > s.cfg.MaxConnections {
		return refuse(fatalf("53300", "sorry, too many clients already"))
	}
	if max := s.cfg.MaxConnectionsPerUser; max > 0 {
		n := 0
		for other := range s.sessions {
			if other != sess && !other.refused && other.user() == user {
				n++
			}
		}
		if n >= max {
			return refuse(fatalf("53300", "too many connections for role \"%s\"", user))
		}
	}
	sess.mu.Lock()
	sess.info.User = user
	sess.mu.Unlock()
	return nil
}

// newByteLimiter allows bytesPerSec with a burst of a quarter second (at
// least one batch), or nil for no limit.
func newByteLimiter(bytesPerSec int64) *rate.Limiter {
	if bytesPerSec <= 0 {
		return nil
	}
	return rate.NewLimiter(rate.Limit(bytesPerSec), int(max(bytesPerSec/4, 1<<20)))
}

// waitBytes blocks until the limiters allow n more bytes.
func waitBytes(n int, limiters ...*rate.Limiter) {
	for _, l := range limiters {
		if l == nil {
			continue
		}
		for left := n; left > 0; {
			chunk := min(left, l.Burst())
			time.Sleep(l.ReserveN(time.Now(), chunk).Delay())
			left -= chunk
		}
	}
}
