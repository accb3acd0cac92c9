package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"

	"github.com/walrelay/walrelay/relay"
	"github.com/walrelay/walrelay/topology"
	"github.com/walrelay/walrelay/walstream"
)

type relayFlags struct {
	nodeID        string
	listen        string
	upstream      string
	dataDir       string
	httpAddr      string
	noSlot        bool
	mirrorSlots   bool
	slot          string
	authFile      string
	logLevel      string
	logFormat     string
	senderTimeout time.Duration
	replyInterval time.Duration
	syncDelay     time.Duration
	retain        string
	maxRetained   string
	feedbackFrom  string
	compression   string
	storeCompress string
	memoryTail    string
	manager       string
	advertise     string
	zone          string
	configFile    string
	managerCA     string
	catchupRate   string
	catchupTotal  string
	tlsCert       string
	tlsKey        string
	tlsClientCA   string
	accessRules   string
	maxConns      int
	maxConnsUser  int
	startupTime   time.Duration
}

// relaySettings are the flags that need parsing or loading, checked once
// (also by `walrelay config check`).
type relaySettings struct {
	catchupRate, catchupTotal uint64
	retain                    relay.RetentionPolicy
	tail                      uint64
	creds                     *relay.Credentials
	rules                     relay.Rules
	tls                       *relay.TLSReloader
	level                     slog.Level
}

func (f *relayFlags) settings() (relaySettings, error) {
	var st relaySettings
	var err error
	if err := st.level.UnmarshalText([]byte(f.logLevel)); err != nil {
		return st, fmt.Errorf("log-level: %w", err)
	}
	if f.logFormat != "text" && f.logFormat != "json" {
		return st, fmt.Errorf("log-format %q: want text or json", f.logFormat)
	}
	if st.retain, err = f.retention(); err != nil {
		return st, err
	}
	if st.tail, err = relay.ParseSize(f.memoryTail); err != nil {
		return st, fmt.Errorf("memory-tail: %w", err)
	}
	if st.catchupRate, err = relay.ParseSize(f.catchupRate); err != nil {
		return st, fmt.Errorf("max-catchup-rate: %w", err)
	}
	if st.catchupTotal, err = relay.ParseSize(f.catchupTotal); err != nil {
		return st, fmt.Errorf("max-catchup-rate-total: %w", err)
	}
	if f.storeCompress != walstream.CodecZstd && f.storeCompress != walstream.CodecS2 && f.storeCompress != "off" {
		return st, fmt.Errorf("store-compression %q: want zstd, s2 or off", f.storeCompress)
	}
	if f.compression != "zstd" && f.compression != "off" && f.compression != "" {
		return st, fmt.Errorf("compression %q: want zstd or off", f.compression)
	}
	if f.upstream != "" {
		if _, err := pgconn.ParseConfig(f.upstream); err != nil {
			return st, fmt.Errorf("upstream: %w", err)
		}
	}
	if f.authFile != "" {
		if st.creds, err = relay.LoadCredentialsFile(f.authFile); err != nil {
			return st, err
		}
	}
	if f.accessRules != "" {
		if st.rules, err = relay.LoadRules(f.accessRules); err != nil {
			return st, err
		}
	}
	if f.tlsCert != "" || f.tlsKey != "" {
		if st.tls, err = relay.NewTLSReloader(relay.TLSFiles{CertFile: f.tlsCert, KeyFile: f.tlsKey, ClientCAFile: f.tlsClientCA}); err != nil {
			return st, err
		}
	} else if f.tlsClientCA != "" {
		return st, errors.New("tls-client-ca needs tls-cert and tls-key")
	}
	return st, nil
}

func (f *relayFlags) retention() (relay.RetentionPolicy, error) {
	var p relay.RetentionPolicy
	var err error
	if p.RetainSize, p.RetainAge, err = relay.ParseRetain(f.retain); err != nil {
		return p, fmt.Errorf("retain: %w", err)
	}
	if p.MaxRetainedSize, err = relay.ParseSize(f.maxRetained); err != nil {
		return p, fmt.Errorf("max-retained-size: %w", err)
	}
	return p, nil
}

func newRelayCmd() *cobra.Command {
	var f relayFlags
	return newRelayCmdWith(&f)
}

func newRelayCmdWith(fp *relayFlags) *cobra.Command {
	f := fp
	cmd := &cobra.Command{
		Use:   "relay",
		Short: "Run a relay: one stream from the parent, served to many children",
		Long: `Runs a relay in the foreground until SIGINT or SIGTERM.

The relay streams WAL from --upstream (a primary, a standby or another relay)
through a physical replication slot walrelay_<node-id>, stores it durably in
--data-dir and serves it to standbys, pg_receivewal and relays that connect to
--listen with the ordinary streaming replication protocol.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			level := new(slog.LevelVar)
			log, err := newLogger(f.logLevel, f.logFormat, level)
			if err != nil {
				return err
			}
			if f.upstream == "" && f.manager == "" {
				return errors.New("need --upstream, --manager (or WALRELAY_MANAGER), or both")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			node, err := newRelayNode(*f, log)
			if err != nil {
				return err
			}
			node.level, node.cmdFlags = level, cmd.Flags()
			return node.Run(ctx)
		},
	}
	addConfigFlag(cmd, &f.configFile)
	fl := cmd.Flags()
	fl.StringVar(&f.tlsCert, "tls-cert", "", "PEM certificate offered to clients that ask for TLS (with --tls-key); reloaded on SIGHUP")
	fl.StringVar(&f.tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	fl.StringVar(&f.tlsClientCA, "tls-client-ca", "", "PEM CA bundle client certificates must chain to (enables the cert method)")
	fl.StringVar(&f.accessRules, "access-rules", "", "file of pg_hba-like rules: TYPE USERS ADDRESS METHOD (host|hostssl|hostnossl, trust|scram-sha-256|cert|reject); reloaded on SIGHUP")
	fl.IntVar(&f.maxConns, "max-connections", 500, "most client connections")
	fl.StringVar(&f.catchupRate, "max-catchup-rate", "0", "bytes per second sent to one child far behind the tip, e.g. 50MB (0: no limit); children at the tip are never limited")
	fl.StringVar(&f.catchupTotal, "max-catchup-rate-total", "0", "bytes per second sent to all children far behind the tip together (0: no limit)")
	fl.IntVar(&f.maxConnsUser, "max-connections-per-user", 0, "most client connections of one user (0: no bound)")
	fl.DurationVar(&f.startupTime, "startup-timeout", 10*time.Second, "close connections that have not finished TLS, startup and authentication within this")
	fl.StringVar(&f.nodeID, "node-id", "", "name of this relay (slot walrelay_<node-id> on the parent, application_name)")
	fl.StringVar(&f.listen, "listen", "127.0.0.1:6432", "address for replication clients")
	fl.StringVar(&f.upstream, "upstream", "", "libpq connection string of the parent")
	fl.StringVar(&f.dataDir, "data-dir", "", "directory for WAL and slots")
	fl.StringVar(&f.httpAddr, "http", "", "address for /status and /metrics (empty: off)")
	fl.BoolVar(&f.noSlot, "no-slot", false, "stream without a replication slot on the parent")
	fl.BoolVar(&f.mirrorSlots, "mirror-slots", true, "create the slots clients create through the relay on the nearest PostgreSQL ancestor too, held active there at the client's position while it streams (what Barman checks with SQL on the primary); false keeps them relay-local")
	fl.StringVar(&f.slot, "slot", "", "slot name on the parent (default walrelay_<node-id>)")
	fl.StringVar(&f.authFile, "auth-file", "", "file of user:password or user:SCRAM-SHA-256$... lines; without it only loopback clients are accepted, without a password")
	fl.StringVar(&f.logLevel, "log-level", "info", "debug, info, warn or error")
	fl.StringVar(&f.logFormat, "log-format", "text", "text or json")
	fl.DurationVar(&f.senderTimeout, "sender-timeout", 60*time.Second, "disconnect children silent this long (wal_sender_timeout)")
	fl.DurationVar(&f.replyInterval, "reply-interval", time.Second, "ask a streaming child for a status reply after this long without one, keeping its replay position in the replica feed fresh (negative: only at half of --sender-timeout)")
	fl.DurationVar(&f.syncDelay, "sync-delay", 0, "let WAL received wait up to this long for more before one fsync covers it all (group commit; e.g. 200us): fewer fsyncs under many small commits, at most this much more latency per hop")
	fl.StringVar(&f.retain, "retain", "1GB", "WAL kept beyond what slots and connected children need: a size (1GB) or an age (24h)")
	fl.StringVar(&f.maxRetained, "max-retained-size", "0", "hard cap on WAL kept for slots and children; beyond it the oldest slots are invalidated (0: no cap)")
	fl.StringVar(&f.compression, "compression", "zstd", "ask a parent that is a relay for a compressed link: zstd or off")
	fl.StringVar(&f.storeCompress, "store-compression", "zstd", "store completed segments as checksummed compressed frames: zstd, s2 (about 4x less CPU, about half the ratio) or off")
	fl.StringVar(&f.manager, "manager", "", "manager API URL(s): register, heartbeat and follow the assigned parent (--upstream becomes optional; default $WALRELAY_MANAGER)")
	fl.StringVar(&f.advertise, "advertise", "", "host:port children and managers use to reach this relay (default: --listen)")
	fl.StringVar(&f.zone, "zone", "", "zone, for placement")
	fl.StringVar(&f.managerCA, "manager-ca", "", "PEM CA bundle to verify https managers (default $WALRELAY_MANAGER_CA)")
	fl.StringVar(&f.memoryTail, "memory-tail", "64MB", "newest WAL kept in memory to serve children at the tip without disk reads")
	fl.StringVar(&f.feedbackFrom, "feedback-from", "all", "whose hot standby feedback is forwarded upstream: all, none, or application_names (a,b)")
	cmd.MarkFlagRequired("node-id")
	cmd.MarkFlagRequired("data-dir")
	return cmd
}

// newLogger builds the process logger; lv, when not nil, holds its level
// so that SIGHUP can change it.
func newLogger(level, format string, lv *slog.LevelVar) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	if lv == nil {
		lv = new(slog.LevelVar)
	}
	lv.Set(l)
	opts := &slog.HandlerOptions{Level: lv}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(os.Stderr, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(os.Stderr, opts)), nil
	default:
		return nil, fmt.Errorf("--log-format %q: want text or json", format)
	}
}

// slotName turns a node id into a valid PostgreSQL slot name.
func slotName(nodeID string) string {
	var b strings.Builder
	b.WriteString("walrelay_")
	for _, c := range strings.ToLower(nodeID) {
		if c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' {
			b.WriteRune(c)
		} else {
			b.WriteByte('_')
		}
	}
	s := b.String()
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}

// relayNode is one relay's parts wired together: store, upstream client,
// server, HTTP endpoints and retention.
type relayNode struct {
	f      relayFlags
	log    *slog.Logger
	retain atomic.Pointer[relay.RetentionPolicy]
	// retainOff: --retain was dropped to make room on a full disk.
	retainOff atomic.Bool
	tls       *relay.TLSReloader
	level     *slog.LevelVar
	cmdFlags  *pflag.FlagSet // to tell command-line settings from file ones on reload
	store     *walstream.Store
	up        *walstream.Upstream
	srv       *relay.Server
	ln        net.Listener
	httpLn    net.Listener
	httpSrv   *http.Server
	feedback  lateFeedback
}

// lateFeedback breaks the construction cycle: the upstream client is built
// before the server whose children supply the feedback.
type lateFeedback struct{ srv *relay.Server }

func (l *lateFeedback) Feedback() (walstream.HotStandbyFeedback, bool) {
	if l.srv == nil {
		return walstream.HotStandbyFeedback{}, false
	}
	return l.srv.Feedback()
}

// newRelayNode opens the store and binds the listeners; Run serves.
func newRelayNode(f relayFlags, log *slog.Logger) (_ *relayNode, err error) {
	n := &relayNode{f: f, log: log}
	st, err := f.settings()
	if err != nil {
		return nil, err
	}
	n.retain.Store(&st.retain)
	n.tls = st.tls
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	tail := st.tail
	if n.store, err = walstream.OpenStore(f.dataDir, storeOptions(f.storeCompress, tail, log)); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			n.close()
		}
	}()
	var compression string
	switch f.compression {
	case "zstd":
		compression = walstream.CompressionZstd
	case "off", "":
	default:
		return nil, fmt.Errorf("--compression %q: want zstd or off", f.compression)
	}
	slot := f.slot
	if slot == "" {
		slot = slotName(f.nodeID)
	}
	if f.noSlot {
		slot = ""
	}
	n.up, err = walstream.NewUpstream(walstream.UpstreamConfig{
		ConnString:  f.upstream,
		NodeID:      f.nodeID,
		Slot:        slot,
		Compression: compression,
		SyncDelay:   f.syncDelay,
		Feedback:    &n.feedback,
		Logger:      log,
		Registerer:  reg,
	}, n.store)
	if err != nil {
		return nil, err
	}
	n.srv, err = relay.NewServer(relay.Config{
		NodeID:                f.nodeID,
		Source:                n.store,
		Upstream:              n.up,
		Credentials:           st.creds,
		Rules:                 st.rules,
		TLS:                   st.tls,
		MaxConnections:        f.maxConns,
		MaxConnectionsPerUser: f.maxConnsUser,
		MaxCatchupRate:        int64(st.catchupRate),
		MaxCatchupRateTotal:   int64(st.catchupTotal),
		StartupTimeout:        f.startupTime,
		SlotDir:               filepath.Join(f.dataDir, "slots"),
		SenderTimeout:         f.senderTimeout,
		ReplyInterval:         f.replyInterval,
		UpstreamConnString:    n.up.ConnString,
		MirrorSlots:           f.mirrorSlots,
		Backfill:              &walstream.Backfiller{ConnString: n.up.ConnString, NodeID: f.nodeID, Store: n.store, Logger: log},
		FeedbackFrom:          relay.ParseFeedbackPolicy(f.feedbackFrom),
		Logger:                log,
		Registerer:            reg,
	})
	if err != nil {
		return nil, err
	}
	n.feedback.srv = n.srv
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "walrelay_durable_lsn_bytes", Help: "Durable end of the relay's WAL, as a byte position.",
	}, func() float64 { _, end := n.store.DurableEnd(); return float64(end) }))

	if n.ln, err = net.Listen("tcp", f.listen); err != nil {
		return nil, fmt.Errorf("listen: %w", err)
	}
	if f.httpAddr != "" {
		if n.httpLn, err = net.Listen("tcp", f.httpAddr); err != nil {
			return nil, fmt.Errorf("listen --http: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/status", n.srv.StatusHandler(n.up))
		n.srv.FeedHandlers(mux)
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace) // execution traces: where latency goes
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
		n.httpSrv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	}
	log.Info("relay starting", "node_id", f.nodeID, "listen", n.ln.Addr().String(), "http", f.httpAddr,
		"data_dir", f.dataDir, "slot", slot, "version", version)
	return n, nil
}

func (n *relayNode) close() {
	if n.ln != nil {
		n.ln.Close()
	}
	if n.httpLn != nil {
		n.httpLn.Close()
	}
	n.store.Close()
}

// Addr is where replication clients connect.
func (n *relayNode) Addr() string { return n.ln.Addr().String() }

// Status is the node's /status document.
func (n *relayNode) Status() relay.NodeStatus { return n.srv.Status(n.up) }

// Run serves until ctx ends, then shuts down in order: children get what is
// durable and a proper end of stream, the upstream stops, files are synced.
func (n *relayNode) Run(ctx context.Context) error {
	upCtx, stopUpstream := context.WithCancel(context.Background())
	defer stopUpstream()
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return n.up.Run(upCtx) })
	g.Go(func() error {
		if err := n.srv.Serve(n.ln); !errors.Is(err, relay.ErrServerClosed) {
			return err
		}
		return nil
	})
	if n.httpSrv != nil {
		g.Go(func() error {
			if err := n.httpSrv.Serve(n.httpLn); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		})
	}
	g.Go(func() error {
		return n.srv.RunRetention(gctx, n.store, n.retentionPolicy, 5*time.Second)
	})
	g.Go(func() error { n.reloadOnSIGHUP(gctx); return nil })
	g.Go(func() error { return n.store.RunCompactor(gctx, time.Second) })
	g.Go(func() error { return n.srv.RunFeedSampler(gctx, n.up, 100*time.Millisecond) })
	if n.f.manager != "" {
		agent, err := n.agent()
		if err != nil {
			return err
		}
		g.Go(func() error { return agent.Run(gctx) })
	}
	g.Go(func() error {
		<-gctx.Done()
		n.log.Info("relay shutting down")
		sctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		err := n.srv.Shutdown(sctx)
		stopUpstream()
		if n.httpSrv != nil {
			n.httpSrv.Shutdown(sctx)
		}
		return err
	})
	err := g.Wait()
	if cerr := n.store.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil && ctx.Err() == nil {
		return err
	}
	n.log.Info("relay stopped")
	return nil
}

// agent links the relay to the managers: the parent they assign becomes the
// upstream.
func (n *relayNode) agent() (*topology.Agent, error) {
	c, err := managerClientCA(n.f.manager, n.f.managerCA)
	if err != nil {
		return nil, err
	}
	addr := n.f.advertise
	if addr == "" {
		addr = n.ln.Addr().String()
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, fmt.Errorf("--advertise %q: %w", addr, err)
	}
	conninfo := fmt.Sprintf("host=%s port=%s sslmode=disable", host, port)
	if pc, err := pgconn.ParseConfig(n.f.upstream); err == nil && n.f.upstream != "" && pc.User != "" {
		conninfo += " user=" + pc.User
	}
	return &topology.Agent{
		Name: n.f.nodeID, Conninfo: conninfo, Zone: n.f.zone, Client: c, Logger: n.log,
		OnParent: func(parent string, minTimeline uint32) {
			n.up.SetMinTimeline(walstream.TimeLineID(minTimeline))
			if err := n.up.SetConnString(parent); err != nil {
				n.log.Error("assigned parent has an invalid connection string", "err", err)
			}
		},
		Report:     n.report,
		EnsureSlot: n.srv.EnsureSlot,
		OnEndpoints: func(eps map[string]topology.ChildEndpoint) {
			m := make(map[string]relay.Endpoint, len(eps))
			for k, v := range eps {
				m[k] = relay.Endpoint(v)
			}
			n.srv.SetChildEndpoints(m)
		},
	}, nil
}

// retentionPolicy is the policy retention reads at each pass: the
// configured one, until the store runs out of space. Then WAL kept only by
// --retain (no slot or child needs it) goes first: it is a convenience,
// while stopping makes the parent hold everything for this relay. --retain
// stays off until a reload or restart, so that the store does not fill,
// stall and trim again every time the retained WAL grows back.
func (n *relayNode) retentionPolicy() relay.RetentionPolicy {
	p := *n.retain.Load()
	if p.RetainSize == 0 && p.RetainAge == 0 {
		return p
	}
	if !n.retainOff.Load() && n.up.Status().State == walstream.UpstreamDiskFull {
		n.retainOff.Store(true)
		n.log.Warn("WAL store is out of space: removing WAL kept only by --retain to make room; --retain stays off until reload (SIGHUP) or restart",
			"retain", n.f.retain)
	}
	if n.retainOff.Load() {
		p.RetainSize, p.RetainAge = 0, 0
	}
	return p
}

// report is what the relay tells the managers with each heartbeat.
func (n *relayNode) report() topology.RelayReport {
	tli, end := n.store.DurableEnd()
	up := n.up.Status()
	rep := topology.RelayReport{
		Timeline: uint32(tli), ReceiveLSN: end, Streaming: up.State == walstream.UpstreamStreaming,
		Compression: up.Compression, RawBytes: up.ReceivedBytes, WireBytes: up.ReceivedWireBytes,
	}
	if pc, err := pgconn.ParseConfig(up.Target); err == nil && up.Target != "" {
		rep.Upstream = net.JoinHostPort(pc.Host, strconv.Itoa(int(pc.Port)))
	}
	now := time.Now()
	for _, c := range n.srv.Sessions() {
		if c.State == "streaming" && !c.Relay && c.ReplayLSN != 0 && !c.LastReplyAt.IsZero() {
			rep.Children = append(rep.Children, topology.ChildReport{Name: c.ApplicationName, WriteLSN: c.WriteLSN, FlushLSN: c.FlushLSN,
				ReplayLSN: c.ReplayLSN, Timeline: uint32(c.Timeline), ReplyAgeMs: now.Sub(c.LastReplyAt).Milliseconds()})
		}
	}
	for _, s := range n.srv.Slots() {
		if !s.Temporary && !s.Invalidated {
			rep.Slots = append(rep.Slots, s.Name)
		}
	}
	return rep
}

// reloadOnSIGHUP re-reads what can change live: the access rules, the TLS
// certificate, retention and the log level (from the config file for the
// settings not given as flags or environment). Streams are not touched; a
// bad file changes nothing and says why.
func (n *relayNode) reloadOnSIGHUP(ctx context.Context) {
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	for {
		select {
		case <-ctx.Done():
			return
		case <-hup:
		}
		if err := n.reload(); err != nil {
			n.log.Error("reload failed; keeping the current settings", "err", err)
		}
	}
}

func (n *relayNode) reload() error {
	f := n.f
	if n.f.configFile != "" && n.cmdFlags != nil {
		// Read the file into a fresh command, then keep the values the
		// running one got from flags or the environment.
		var fresh relayFlags
		fc := newRelayCmdWith(&fresh)
		n.cmdFlags.VisitAll(func(fl *pflag.Flag) {
			if fl.Changed {
				fc.Flags().Set(fl.Name, fl.Value.String())
			}
		})
		if _, err := applySettings(fc.Flags(), n.f.configFile); err != nil {
			return err
		}
		f = fresh
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(f.logLevel)); err != nil {
		return fmt.Errorf("log-level: %w", err)
	}
	p, err := f.retention()
	if err != nil {
		return err
	}
	var rules relay.Rules
	if f.accessRules != "" {
		if rules, err = relay.LoadRules(f.accessRules); err != nil {
			return err
		}
	}
	if n.tls != nil {
		if err := n.tls.Reload(); err != nil {
			return err
		}
	}
	if n.level != nil {
		n.level.Set(lv)
	}
	n.retain.Store(&p)
	if n.retainOff.Swap(false) {
		n.log.Info("--retain is in effect again after the full disk", "retain", f.retain)
	}
	n.srv.SetRules(rules)
	n.log.Info("reloaded", "log_level", lv.String(), "access_rules", f.accessRules, "rules", len(rules),
		"retain", f.retain, "max_retained_size", f.maxRetained, "tls", n.tls != nil)
	return nil
}

// storeOptions are the store's options for --store-compression and the
// memory tail.
func storeOptions(compression string, tail uint64, log *slog.Logger) walstream.StoreOptions {
	o := walstream.StoreOptions{Logger: log, TailBytes: tail}
	if compression != "off" {
		o.Compress, o.Codec = true, compression
	}
	return o
}
