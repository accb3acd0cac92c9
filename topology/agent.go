package topology

import (
	"context"
	"log/slog"
	"time"

	"github.com/walrelay/walrelay/walstream"
)

// Agent is a relay's link to the managers: it registers the relay,
// heartbeats, and watches the tree for the relay's assigned parent. When no
// manager answers it changes nothing: the data plane keeps its last parent.
type Agent struct {
	Name     string // the relay's node id
	Conninfo string // how children (and the managers) reach the relay
	Zone     string
	Client   *Client
	// OnParent is called with the assigned parent's connection string each
	// time it changes (and once at start when one is assigned). An empty
	// string means: stream from nobody (the parent was fenced). When the
	// parent is the primary, minTimeline is the timeline the managers
	// committed for it: a node on a lower one is not the primary, whatever
	// answers at its address.
	OnParent func(conninfo string, minTimeline uint32)
	// Report, when set, supplies the positions sent with each heartbeat.
	Report func() RelayReport
	// EnsureSlot, when set, creates or advances a slot the managers want
	// held for a standby that may be moved to this relay.
	EnsureSlot func(name string, restart walstream.LSN) (created bool, err error)
	// OnEndpoints, when set, gets the registered endpoints of the managed
	// standbys among the relay's children (for its own replica feed).
	OnEndpoints func(map[string]ChildEndpoint)
	Logger      *slog.Logger
	// Heartbeat is the interval between heartbeats. Default 1 s.
	Heartbeat time.Duration
}

// Run registers, heartbeats and follows assignments until ctx ends.
func (a *Agent) Run(ctx context.Context) error {
	if a.Logger == nil {
		a.Logger = slog.New(slog.DiscardHandler)
	}
	if a.Heartbeat <= 0 {
		a.Heartbeat = time.Second
	}
	log := a.Logger.With("node_id", a.Name)
	for ctx.Err() == nil {
		rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		_, err := a.Client.Apply(rctx, Command{Op: OpRegisterRelay, Name: a.Name, Conninfo: a.Conninfo, Zone: a.Zone})
		cancel()
		if err == nil {
			log.Info("registered with the managers")
			break
		}
		log.Warn("cannot register with the managers; retrying", "err", err)
		sleep(ctx, 2*time.Second)
	}
	go a.heartbeat(ctx)
	var epoch uint64
	var parent string
	var parentTLI uint32
	for ctx.Err() == nil {
		wctx, cancel := context.WithTimeout(ctx, 40*time.Second)
		tr, err := a.Client.Watch(wctx, epoch)
		cancel()
		if err != nil {
			if ctx.Err() == nil {
				log.Warn("watching the tree failed; keeping the current parent", "err", err)
				sleep(ctx, time.Second)
			}
			continue
		}
		epoch = tr.Tree.Epoch
		me := tr.Tree.Nodes[a.Name]
		if me == nil || me.Parent == "" {
			continue
		}
		p := tr.Tree.Nodes[me.Parent]
		if p == nil || p.Conninfo == "" {
			continue
		}
		target, tli := p.Conninfo, uint32(0)
		if p.Kind == KindPrimary && me.Parent == tr.Tree.Primary {
			tli = tr.Tree.Timeline
		}
		if p.State == StateFenced {
			target, tli = "", 0
		}
		if target == parent && tli == parentTLI {
			continue
		}
		if target == "" {
			log.Warn("the assigned parent is fenced: not streaming from it until the managers assign another", "parent", me.Parent, "epoch", epoch)
		} else {
			log.Info("assigned a new parent", "parent", me.Parent, "epoch", epoch, "min_timeline", tli)
		}
		parent, parentTLI = target, tli
		a.OnParent(target, tli)
	}
	return nil
}

func (a *Agent) heartbeat(ctx context.Context) {
	t := time.NewTicker(a.Heartbeat)
	defer t.Stop()
	for {
		var rep *RelayReport
		if a.Report != nil {
			r := a.Report()
			rep = &r
		}
		hctx, cancel := context.WithTimeout(ctx, a.Heartbeat*3)
		resp, err := a.Client.Heartbeat(hctx, a.Name, rep)
		cancel()
		if err == nil && a.OnEndpoints != nil {
			a.OnEndpoints(resp.Endpoints)
		}
		if err == nil && a.EnsureSlot != nil {
			for _, w := range resp.Slots {
				if _, err := a.EnsureSlot(w.Name, w.RestartLSN); err != nil {
					a.Logger.Warn("cannot hold a slot for a managed standby", "slot", w.Name, "standby", w.Standby, "err", err)
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}
