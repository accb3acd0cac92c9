package failover

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/walrelay/walrelay/topology"
	"github.com/walrelay/walrelay/walstream"
)

// Mode says what the manager does when the primary fails.
type Mode string

const (
	// ModeAuto promotes the most advanced candidate (the default).
	ModeAuto Mode = "auto"
	// ModeExternal never promotes: it follows a promotion done elsewhere.
	ModeExternal Mode = "external"
	// ModeOff detects and logs only (promotions elsewhere are still
	// followed: the tree must not keep streaming from a dead primary).
	ModeOff Mode = "off"
)

// ParseMode checks a --promotion value.
func ParseMode(s string) (Mode, error) {
	switch Mode(s) {
	case ModeAuto, ModeExternal, ModeOff:
		return Mode(s), nil
	}
	return "", fmt.Errorf("--promotion %q: want auto, external or off", s)
}

// Leader is what the controller needs from the manager it runs beside.
type Leader interface {
	IsLeader() bool
	Tree() *topology.Tree
	Observed(name string) (topology.Observation, bool)
	RelayReports() map[string]topology.RelayObservation
	PrimarySeen() time.Time
	Apply(ctx context.Context, c topology.Command) (uint64, error)
	Query(ctx context.Context, node, sql string) ([][]string, error)
}

// Config tunes the controller.
type Config struct {
	Mode Mode
	// PrimaryFailureTimeout is how long the managers must fail to read the
	// primary before it can count as down. Default 3 s.
	PrimaryFailureTimeout time.Duration
	// CatchupTimeout bounds the wait for the chosen candidate to receive
	// what the relay tier holds before promotion. Default 10 s.
	CatchupTimeout time.Duration
	// FenceCommand, when set, is run through sh -c with the old primary's
	// name as $1 after the new primary is committed (e.g. STONITH).
	FenceCommand string
	// PatroniURLs are the REST APIs of the Patroni members running the
	// primary side; the managers follow the leader they name (patroni.go).
	PatroniURLs []string
	// PatroniDCS is Patroni's etcd (v3) with its namespace and scope,
	// http://ETCD:2379/service/SCOPE: read when no API answers.
	PatroniDCS string
	Logger     *slog.Logger
}

// Controller runs on every manager and acts only on the leader.
type Controller struct {
	cfg Config
	l   Leader
	log *slog.Logger

	// mu serializes failover, switchover and following: one change of
	// primary at a time.
	mu       sync.Mutex
	lastWarn time.Time
}

// New returns a controller for l.
func New(l Leader, cfg Config) *Controller {
	if cfg.Mode == "" {
		cfg.Mode = ModeAuto
	}
	if cfg.PrimaryFailureTimeout <= 0 {
		cfg.PrimaryFailureTimeout = 3 * time.Second
	}
	if cfg.CatchupTimeout <= 0 {
		cfg.CatchupTimeout = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Controller{cfg: cfg, l: l, log: cfg.Logger.With("component", "failover")}
}

// Run checks the primary every interval until ctx ends.
func (c *Controller) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if c.l.IsLeader() {
			c.round(ctx)
		}
	}
}

func (c *Controller) round(ctx context.Context) {
	c.mu.Lock()
	defer c.mu.Unlock()
	tree := c.l.Tree()
	if (len(c.cfg.PatroniURLs) > 0 || c.cfg.PatroniDCS != "") && c.followPatroni(ctx, tree) {
		return
	}
	if c.followPromotion(ctx, tree) {
		return
	}
	c.learnTimeline(ctx, tree)
	now := time.Now()
	down, why := detect(tree, now, c.l.PrimarySeen(), c.l.RelayReports(), c.cfg.PrimaryFailureTimeout)
	if !down {
		return
	}
	if c.cfg.Mode != ModeAuto {
		c.warn("the primary is down; not promoting (--promotion "+string(c.cfg.Mode)+")", "primary", tree.Primary, "why", why)
		return
	}
	c.log.Warn("the primary is down: failing over", "primary", tree.Primary, "why", why)
	if err := c.failover(ctx, tree); err != nil {
		c.log.Error("failover did not complete; retrying", "primary", tree.Primary, "err", err)
	}
}

func (c *Controller) warn(msg string, args ...any) {
	if time.Since(c.lastWarn) < 10*time.Second {
		return
	}
	c.lastWarn = time.Now()
	c.log.Warn(msg, args...)
}

// learnTimeline records the primary's timeline when it was registered
// without one: following promotions and fencing compare against it.
func (c *Controller) learnTimeline(ctx context.Context, tree *topology.Tree) {
	if tree.Timeline != 0 || tree.Primary == "" {
		return
	}
	o, ok := c.l.Observed(tree.Primary)
	if !ok || o.Err != nil || o.InRecovery || o.Timeline == 0 {
		return
	}
	n := tree.Nodes[tree.Primary]
	if _, err := c.l.Apply(ctx, topology.Command{Op: topology.OpSetPrimary, Name: n.Name, Conninfo: n.Conninfo, Timeline: o.Timeline}); err != nil {
		c.log.Warn("cannot record the primary's timeline", "err", err)
	}
}

// followPromotion commits a registered standby that left recovery on a
// higher timeline as the primary: a promotion done by someone else
// (Patroni, a cloud service, a human), or our own whose commit was cut
// short.
func (c *Controller) followPromotion(ctx context.Context, tree *topology.Tree) bool {
	for _, name := range tree.Names() {
		n := tree.Nodes[name]
		if n.Kind != topology.KindStandby || n.State == topology.StateFenced {
			continue
		}
		o, ok := c.l.Observed(name)
		if !ok || o.Err != nil || o.InRecovery || o.Timeline <= tree.Timeline || time.Since(o.At) > freshness {
			continue
		}
		c.log.Warn("a registered standby was promoted: following it", "standby", name, "timeline", o.Timeline, "old_primary", tree.Primary)
		if err := c.commitPrimary(ctx, tree, name, o.Timeline); err != nil {
			c.log.Error("cannot commit the new primary", "node", name, "err", err)
		}
		return true
	}
	return false
}

// failover catches the best candidate up from the relay tier, promotes it
// and commits it.
func (c *Controller) failover(ctx context.Context, tree *topology.Tree) error {
	now := time.Now()
	cands := candidates(tree, now, c.l.Observed)
	if len(cands) == 0 {
		return errors.New("no promotable standby is reachable and in recovery on the primary's timeline")
	}
	target, holder := furthest(tree, now, c.l.RelayReports(), c.l.Observed)
	best := cands[0]
	c.log.Info("failover candidate", "candidate", best.name, "received_lsn", position(best.obs), "tier_lsn", target, "held_by", holder)
	if got := position(best.obs); got < target {
		if holder == "" {
			// Only a (non-candidate) standby has it, and placement never
			// makes a standby a parent.
			c.log.Error("a standby holds WAL the best candidate lacks and no relay has it; promoting without it",
				"candidate", best.name, "missing_bytes", uint64(target-got))
		} else if err := c.catchUp(ctx, tree, best.name, holder, target); err != nil {
			c.log.Error("the candidate could not catch up with the relay tier; promoting anyway",
				"candidate", best.name, "missing_bytes", uint64(target-got), "held_by", holder, "err", err)
		}
	}
	if last := c.lastPrimaryLSN(tree); last > target {
		c.log.Warn("the primary was last seen ahead of anything the tree received: transactions committed only there (asynchronously) are lost",
			"primary_last_lsn", last, "tier_lsn", target, "lost_bytes_at_most", uint64(last-target))
	}
	tli, err := c.promote(ctx, best.name)
	if err != nil {
		return err
	}
	return c.commitPrimary(ctx, tree, best.name, tli)
}

func (c *Controller) lastPrimaryLSN(tree *topology.Tree) walstream.LSN {
	o, ok := c.l.Observed(tree.Primary)
	if !ok {
		return 0
	}
	return o.CurrentLSN
}

// catchUp moves the candidate under the relay holding the most WAL (the
// observe loop re-points it) and waits until it has received target.
func (c *Controller) catchUp(ctx context.Context, tree *topology.Tree, cand, holder string, target walstream.LSN) error {
	if tree.Nodes[cand].Parent != holder {
		c.log.Info("catching the candidate up from the relay tier", "candidate", cand, "from", holder, "target_lsn", target)
		if _, err := c.l.Apply(ctx, topology.Command{Op: topology.OpAssign, Name: cand, Parent: holder, Pinned: true}); err != nil {
			return fmt.Errorf("move %s under %s: %w", cand, holder, err)
		}
	}
	return c.waitReceived(ctx, cand, target, c.cfg.CatchupTimeout)
}

// waitReceived polls a standby until it has received (flushed) target.
func (c *Controller) waitReceived(ctx context.Context, node string, target walstream.LSN, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	var got walstream.LSN
	for {
		qctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		rows, err := c.l.Query(qctx, node, "SELECT COALESCE(pg_last_wal_receive_lsn()::text, '0/0')")
		cancel()
		if err == nil && len(rows) == 1 {
			got, _ = walstream.ParseLSN(rows[0][0])
			if got >= target {
				c.log.Info("candidate caught up", "node", node, "received_lsn", got, "target_lsn", target)
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s received %s of %s within %s", node, got, target, timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// promote runs pg_promote on node and returns its new timeline.
func (c *Controller) promote(ctx context.Context, node string) (uint32, error) {
	qctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	// A node turned read-only by a switchover must accept writes once
	// it is the primary.
	c.l.Query(qctx, node, "ALTER SYSTEM RESET default_transaction_read_only")
	c.l.Query(qctx, node, "SELECT pg_reload_conf()")
	c.log.Info("promoting", "node", node)
	started := time.Now()
	rows, err := c.l.Query(qctx, node, "SELECT pg_promote(true, 60)")
	if err != nil {
		return 0, fmt.Errorf("pg_promote on %s: %w", node, err)
	}
	if len(rows) != 1 || rows[0][0] != "t" {
		return 0, fmt.Errorf("pg_promote on %s did not finish within 60 s", node)
	}
	rows, err = c.l.Query(qctx, node, "SELECT ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int")
	if err != nil || len(rows) != 1 {
		return 0, fmt.Errorf("read the timeline of %s after promotion: %v", node, err)
	}
	tli, err := strconv.ParseUint(rows[0][0], 10, 32)
	if err != nil {
		return 0, fmt.Errorf("timeline of %s: %w", node, err)
	}
	c.log.Info("promoted", "node", node, "timeline", tli, "took", time.Since(started).Round(time.Millisecond))
	return uint32(tli), nil
}

// commitPrimary records the new primary and timeline in the Raft log,
// which fences the old one, and runs the fence hook. Placement then moves
// the old primary's children to the new one.
func (c *Controller) commitPrimary(ctx context.Context, tree *topology.Tree, node string, tli uint32) error {
	n := tree.Nodes[node]
	actx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := c.l.Apply(actx, topology.Command{Op: topology.OpSetPrimary, Name: node, Conninfo: n.Conninfo, Timeline: tli, External: n.External}); err != nil {
		return fmt.Errorf("commit %s as primary on timeline %d: %w", node, tli, err)
	}
	old := tree.Primary
	c.log.Warn("new primary committed; the old one is fenced", "primary", node, "timeline", tli, "fenced", old)
	if c.cfg.FenceCommand != "" && old != "" && old != node {
		go c.runFence(old)
	}
	return nil
}

func (c *Controller) runFence(old string) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "sh", "-c", c.cfg.FenceCommand, "walrelay-fence", old).CombinedOutput()
	if err != nil {
		c.log.Error("fence command failed", "node", old, "err", err, "output", strings.TrimSpace(string(out)))
		return
	}
	c.log.Info("fence command ran", "node", old, "output", strings.TrimSpace(string(out)))
}
