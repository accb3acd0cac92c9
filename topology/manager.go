package topology

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// ManagerConfig configures one member of the manager cluster.
type ManagerConfig struct {
	NodeID   string // Raft server ID
	RaftAddr string // host:port for Raft traffic (advertised as given)
	HTTPAddr string // host:port for the API
	// AdvertiseHTTP is the API address other members and clients use
	// (default: the bound HTTPAddr, wrong when it is 0.0.0.0).
	AdvertiseHTTP string
	DataDir       string // Raft log, stable store and snapshots
	// Bootstrap makes this member form a new one-member cluster when it
	// has no state yet. Join lists other members' API URLs to ask for
	// membership instead.
	Bootstrap bool
	Join      []string
	// FailureTimeout marks a relay failed after this long without a
	// heartbeat. Default 5 s.
	FailureTimeout time.Duration
	// PositionInterval is how often the leader reads standbys' replay
	// positions for the replica feed. Default 100 ms.
	PositionInterval time.Duration
	// Policy is what placement keeps the tree to.
	Policy Policy
	// Metrics, when set, gets the manager's collectors and is served at
	// /metrics.
	Metrics *prometheus.Registry
	// TLS, when set, serves the API over HTTPS and runs Raft over mutual
	// TLS; Join URLs and the members' addresses are then https.
	TLS    *TLSFiles
	Logger *slog.Logger
}

// Validate checks the configuration.
func (c *ManagerConfig) Validate() error {
	if c.NodeID == "" || c.RaftAddr == "" || c.HTTPAddr == "" || c.DataDir == "" {
		return errors.New("manager: node id, raft address, http address and data dir are required")
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.FailureTimeout <= 0 {
		c.FailureTimeout = 5 * time.Second
	}
	if c.PositionInterval <= 0 {
		c.PositionInterval = DefaultPositionInterval
	}
	return nil
}

// Manager is one member of the Raft cluster that owns the tree, with its
// HTTP API. Any member answers reads; writes go to the leader.
type Manager struct {
	cfg   ManagerConfig
	log   *slog.Logger
	fsm   *FSM
	raft  *raft.Raft
	store *raftboltdb.BoltStore
	trans *raft.NetworkTransport
	ln    net.Listener
	http  *http.Server
	tls   *managerTLS
	// client talks to other members (forwarding, joining).
	client *http.Client
	live   liveness
	obs    *observer
	feed   *replicaFeed
	mux    *http.ServeMux
	// joined is set once this member has seen itself in the Raft
	// configuration; only the Run loop touches it.
	joined bool
}

// NewManager opens the member's state and binds its listeners.
func NewManager(cfg ManagerConfig) (*Manager, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, err
	}
	m := &Manager{cfg: cfg, log: cfg.Logger.With("manager", cfg.NodeID), fsm: NewFSM(),
		live: liveness{lastSeen: map[string]time.Time{}}, obs: newObserver(), feed: newReplicaFeed()}
	var err error
	if m.store, err = raftboltdb.New(raftboltdb.Options{Path: filepath.Join(cfg.DataDir, "raft.db")}); err != nil {
		return nil, fmt.Errorf("open raft store: %w", err)
	}
	snaps, err := raft.NewFileSnapshotStore(cfg.DataDir, 2, io.Discard)
	if err != nil {
		m.store.Close()
		return nil, fmt.Errorf("open snapshot store: %w", err)
	}
	addr, err := net.ResolveTCPAddr("tcp", cfg.RaftAddr)
	if err != nil {
		m.store.Close()
		return nil, fmt.Errorf("raft address: %w", err)
	}
	// No client timeout: forwarded requests (a switchover takes a while)
	// are bounded by their own request's context.
	m.client = &http.Client{}
	if cfg.TLS != nil {
		if m.tls, err = loadManagerTLS(*cfg.TLS); err != nil {
			m.store.Close()
			return nil, err
		}
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.TLSClientConfig = m.tls.client
		m.client = &http.Client{Transport: tr}
		layer, err := newRaftTLSLayer(cfg.RaftAddr, addr, m.tls)
		if err != nil {
			m.store.Close()
			return nil, fmt.Errorf("raft transport: %w", err)
		}
		m.trans = raft.NewNetworkTransport(layer, 3, 10*time.Second, io.Discard)
	} else if m.trans, err = raft.NewTCPTransport(cfg.RaftAddr, addr, 3, 10*time.Second, io.Discard); err != nil {
		m.store.Close()
		return nil, fmt.Errorf("raft transport: %w", err)
	}
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(cfg.NodeID)
	rc.HeartbeatTimeout = 500 * time.Millisecond
	rc.ElectionTimeout = 500 * time.Millisecond
	rc.LeaderLeaseTimeout = 250 * time.Millisecond
	rc.Logger = hclog.New(&hclog.LoggerOptions{Output: io.Discard})
	has, err := raft.HasExistingState(m.store, m.store, snaps)
	if err != nil {
		m.close()
		return nil, err
	}
	if m.raft, err = raft.NewRaft(rc, m.fsm, m.store, m.store, snaps, m.trans); err != nil {
		m.close()
		return nil, fmt.Errorf("start raft: %w", err)
	}
	if cfg.Bootstrap && !has {
		boot := raft.Configuration{Servers: []raft.Server{{ID: rc.LocalID, Address: m.trans.LocalAddr()}}}
		if err := m.raft.BootstrapCluster(boot).Error(); err != nil {
			m.close()
			return nil, fmt.Errorf("bootstrap: %w", err)
		}
	}
	if m.ln, err = net.Listen("tcp", cfg.HTTPAddr); err != nil {
		m.close()
		return nil, fmt.Errorf("listen: %w", err)
	}
	if m.tls != nil {
		m.ln = tls.NewListener(m.ln, m.tls.server)
	}
	handler := m.api()
	if cfg.Metrics != nil {
		cfg.Metrics.MustRegister(newManagerCollector(m))
		m.mux.Handle("GET /metrics", promhttp.HandlerFor(cfg.Metrics, promhttp.HandlerOpts{Registry: cfg.Metrics}))
	}
	m.http = &http.Server{Handler: handler, ReadHeaderTimeout: 10 * time.Second,
		// TLS handshake failures and the like, at debug level in our log.
		ErrorLog: slog.NewLogLogger(m.log.Handler(), slog.LevelDebug)}
	return m, nil
}

func (m *Manager) close() {
	if m.raft != nil {
		m.raft.Shutdown().Error()
	}
	if m.trans != nil {
		m.trans.Close()
	}
	m.store.Close()
}

// Run serves the API and keeps this member's record in the tree until ctx
// ends.
func (m *Manager) Run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() {
		if err := m.http.Serve(m.ln); !errors.Is(err, http.ErrServerClosed) {
			errc <- err
		}
		close(errc)
	}()
	m.log.Info("manager started", "raft", m.cfg.RaftAddr, "http", m.ln.Addr().String(), "bootstrap", m.cfg.Bootstrap)
	sctx, stopSupervise := context.WithCancel(ctx)
	superviseDone := make(chan struct{})
	observeDone := make(chan struct{})
	positionsDone := make(chan struct{})
	go func() { defer close(positionsDone); m.pollPositions(sctx, m.cfg.PositionInterval) }()
	go func() { defer close(superviseDone); m.supervise(sctx, 500*time.Millisecond) }()
	go func() { defer close(observeDone); m.observe(sctx, time.Second) }()
	defer func() { stopSupervise(); <-superviseDone; <-observeDone; <-positionsDone }()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			m.http.Shutdown(sctx)
			cancel()
			<-errc
			m.close()
			return nil
		case err := <-errc:
			m.close()
			return err
		case <-t.C:
			m.ensureMembership(ctx)
		}
	}
}

// ensureMembership joins the cluster through Join URLs until this member
// first appears in the Raft configuration, and, while leading, makes sure
// its HTTP address is in the tree. Once a member, it never asks to join
// again: an operator who removed it (walrelay members remove) meant it.
func (m *Manager) ensureMembership(ctx context.Context) {
	inConfig := false
	if f := m.raft.GetConfiguration(); f.Error() == nil {
		for _, s := range f.Configuration().Servers {
			inConfig = inConfig || s.ID == raft.ServerID(m.cfg.NodeID)
		}
	}
	if inConfig {
		m.joined = true
	}
	if inConfig && m.raft.State() == raft.Leader && m.fsm.Tree().Managers[m.cfg.NodeID] != m.apiURL() {
		m.raft.Apply(Command{Op: OpManager, Name: m.cfg.NodeID, Conninfo: m.apiURL()}.Encode(), 5*time.Second)
		return
	}
	if m.joined || len(m.cfg.Join) == 0 {
		return
	}
	c := &Client{URLs: m.cfg.Join, HTTP: m.client}
	if err := c.Join(ctx, JoinRequest{ID: m.cfg.NodeID, RaftAddr: string(m.trans.LocalAddr()), HTTPAddr: m.apiURL()}); err != nil {
		m.log.Warn("join failed; retrying", "err", err)
	}
}

// apiURL is this member's API as the others and clients reach it.
func (m *Manager) apiURL() string {
	if m.tls != nil {
		return "https://" + m.advertisedHTTP()
	}
	return "http://" + m.advertisedHTTP()
}

func (m *Manager) advertisedHTTP() string {
	if m.cfg.AdvertiseHTTP != "" {
		return m.cfg.AdvertiseHTTP
	}
	return m.ln.Addr().String()
}

// Addr is the API's address.
func (m *Manager) Addr() string { return m.ln.Addr().String() }
