package failover

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walrelay/walrelay/topology"
)

// Following Patroni. With Config.PatroniURLs the managers learn who leads
// from Patroni's REST API, as Patroni's neighbours (HAProxy, vip-manager) do:
// GET /cluster on any member lists every member with its role, state and
// timeline. With Config.PatroniDCS they read the same from Patroni's keys in
// etcd (when no API answers, or without any API configured). The leader, once it answers out of recovery, is committed as the
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

// patroniCluster asks each configured API in turn for the cluster, then
// the DCS when one is configured.
func (c *Controller) patroniCluster(ctx context.Context) ([]patroniMember, error) {
	members, err := c.patroniREST(ctx)
	if err != nil && c.cfg.PatroniDCS != "" {
		var derr error
		if members, derr = patroniDCS(ctx, c.cfg.PatroniDCS); derr == nil {
			return members, nil
		}
		err = errors.Join(err, derr)
	}
	return members, err
}

func (c *Controller) patroniREST(ctx context.Context) ([]patroniMember, error) {
	if len(c.cfg.PatroniURLs) == 0 {
		return nil, errors.New("no --patroni-url")
	}
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
		c.warn("neither Patroni's REST API nor its DCS answers: following promotions by polling the registered members", "err", err)
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

// patroniDCS reads the cluster from Patroni's keys in etcd (v3, through its
// JSON gateway): dcs is the etcd URL followed by Patroni's namespace and
// scope, e.g. http://127.0.0.1:2379/service/walrelay. The leader key names
// the leader; members/NAME hold each member's state, role, timeline and
// conn_url.
func patroniDCS(ctx context.Context, dcs string) ([]patroniMember, error) {
	u, err := url.Parse(dcs)
	if err != nil || u.Host == "" || strings.Trim(u.Path, "/") == "" {
		return nil, fmt.Errorf("--patroni-dcs %q: want http://ETCD:2379/NAMESPACE/SCOPE", dcs)
	}
	prefix := strings.TrimRight(u.Path, "/") + "/"
	// range_end is the prefix with its last byte incremented: every key
	// under it.
	end := []byte(prefix)
	end[len(end)-1]++
	body, _ := json.Marshal(map[string]string{
		"key":       base64.StdEncoding.EncodeToString([]byte(prefix)),
		"range_end": base64.StdEncoding.EncodeToString(end),
	})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u.Scheme+"://"+u.Host+"/v3/kv/range", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	resp, err := patroniClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var out struct {
		KVs []struct {
			Key, Value string
		} `json:"kvs"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("etcd range %s: HTTP %d: %v", prefix, resp.StatusCode, err)
	}
	var leader string
	var members []patroniMember
	for _, kv := range out.KVs {
		k, err1 := base64.StdEncoding.DecodeString(kv.Key)
		v, err2 := base64.StdEncoding.DecodeString(kv.Value)
		if err1 != nil || err2 != nil {
			continue
		}
		key := strings.TrimPrefix(string(k), prefix)
		switch {
		case key == "leader":
			leader = string(v)
		case strings.HasPrefix(key, "members/"):
			var m struct {
				ConnURL  string `json:"conn_url"`
				State    string `json:"state"`
				Timeline uint32 `json:"timeline"`
			}
			if json.Unmarshal(v, &m) != nil {
				continue
			}
			pm := patroniMember{Name: strings.TrimPrefix(key, "members/"), Role: "replica", State: m.State, Timeline: m.Timeline}
			if cu, err := url.Parse(m.ConnURL); err == nil {
				pm.Host = cu.Hostname()
				pm.Port, _ = strconv.Atoi(cu.Port())
			}
			members = append(members, pm)
		}
	}
	if len(members) == 0 {
		return nil, fmt.Errorf("etcd has no Patroni members under %s", prefix)
	}
	for i := range members {
		if members[i].Name == leader {
			members[i].Role = "leader"
		}
	}
	return members, nil
}
