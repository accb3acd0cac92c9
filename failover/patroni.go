package failover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walrelay/walrelay/topology"
)

// Following Patroni. With Config.PatroniURLs the managers learn who leads
// from Patroni's REST API, as Patroni's neighbours (HAProxy, vip-manager) do:
// GET /cluster on any member lists every member with its role, state and
// timeline. The leader, once it answers out of recovery, is committed as the
// primary (which fences the old one); a fenced former leader that Patroni
// runs as a replica on the leader's timeline (after pg_rewind) is unfenced.
// When no member's API answers, the managers fall back to polling the
// registered candidates (followPromotion).

// patroniMember is one member in GET /cluster.
type patroniMember struct {
	Name     string `json:"name"`
	Role     string `json:"role"`
	State    string `json:"state"`
	Host     string `json:"host"`
	Port     int    `json:"port"`
	Timeline uint32 `json:"timeline"`
}

var patroniClient = &http.Client{Timeout: 2 * time.Second}

// patroniCluster asks each configured API in turn for the cluster.
func (c *Controller) patroniCluster(ctx context.Context) ([]patroniMember, error) {
	var errs []error
	for _, u := range c.cfg.PatroniURLs {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, u+"/cluster", nil)
		if err != nil {
			return nil, err
		}
		resp, err := patroniClient.Do(req)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var body struct {
			Members []patroniMember `json:"members"`
		}
		err = json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusOK {
			errs = append(errs, fmt.Errorf("%s/cluster: HTTP %d: %v", u, resp.StatusCode, err))
			continue
		}
		return body.Members, nil
	}
	return nil, errors.Join(errs...)
}

// patroniNode is the registered node a member is: the same name, or else the
// same host and port in its conninfo.
func patroniNode(tree *topology.Tree, m patroniMember) string {
	if _, ok := tree.Nodes[m.Name]; ok {
		return m.Name
	}
	for _, name := range tree.Names() {
		cfg, err := pgconn.ParseConfig(tree.Nodes[name].Conninfo)
		if err == nil && cfg.Host == m.Host && int(cfg.Port) == m.Port {
			return name
		}
	}
	return ""
}

// followPatroni commits Patroni's leader as the primary and unfences the
// members it runs as replicas again. It reports whether it changed or is
// waiting to change the primary (the round then ends there).
func (c *Controller) followPatroni(ctx context.Context, tree *topology.Tree) bool {
	members, err := c.patroniCluster(ctx)
	if err != nil {
		c.warn("Patroni's REST API does not answer: following promotions by polling the registered candidates", "err", err)
		return false
	}
	var leader *patroniMember
	for i := range members {
		if members[i].Role == "leader" && members[i].State == "running" {
			leader = &members[i]
		}
	}
	if leader == nil {
		return false // between leaders: Patroni has not chosen yet
	}
	name := patroniNode(tree, *leader)
	if name == "" {
		c.warn("Patroni's leader is not registered with the managers: register it (walrelay standby add --external)",
			"member", leader.Name, "address", net.JoinHostPort(leader.Host, strconv.Itoa(leader.Port)))
		return false
	}
	if name == tree.Primary && leader.Timeline > tree.Timeline {
		// Patroni restarted a crashed leader and promoted it again.
		o, ok := c.l.Observed(name)
		if ok && o.Err == nil && !o.InRecovery && time.Since(o.At) <= freshness && o.Timeline > tree.Timeline {
			c.log.Warn("Patroni's leader is on a new timeline: following it", "leader", name, "timeline", o.Timeline)
			if err := c.commitPrimary(ctx, tree, name, o.Timeline); err != nil {
				c.log.Error("cannot record the leader's new timeline", "node", name, "err", err)
			}
			return true
		}
	}
	if name != tree.Primary {
		// Patroni takes the leader key before the promotion ends: wait
		// until the node itself says it writes.
		o, ok := c.l.Observed(name)
		if !ok || o.Err != nil || o.InRecovery || time.Since(o.At) > freshness {
			return true
		}
		tli := max(o.Timeline, leader.Timeline)
		c.log.Warn("Patroni has a new leader: following it", "leader", name, "timeline", tli, "old_primary", tree.Primary)
		if err := c.commitPrimary(ctx, tree, name, tli); err != nil {
			c.log.Error("cannot commit Patroni's leader as the primary", "node", name, "err", err)
		}
		return true
	}
	for _, m := range members {
		if m.Role != "replica" && m.Role != "sync_standby" || m.State != "running" && m.State != "streaming" || m.Timeline != leader.Timeline {
			continue
		}
		n := tree.Nodes[patroniNode(tree, m)]
		if n == nil || n.State != topology.StateFenced {
			continue
		}
		c.log.Info("a fenced former primary is a replica of Patroni's leader again: no longer fenced", "node", n.Name, "timeline", m.Timeline)
		if _, err := c.l.Apply(ctx, topology.Command{Op: topology.OpSetState, Name: n.Name, State: topology.StateAlive}); err != nil {
			c.log.Warn("cannot unfence", "node", n.Name, "err", err)
		}
	}
	return false
}
