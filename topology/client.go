package topology

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/walrelay/walrelay/internal/feed"
)

// Client talks to the manager cluster, trying each URL in turn.
type Client struct {
	URLs []string
	HTTP *http.Client // nil: a client with a 40 s timeout

	// preferred is the index of the URL that answered last: it is tried
	// first, so a member that hangs (a partition, a stalled host) costs
	// one slow attempt, not one per request.
	preferred atomic.Int32
}

// ErrUnreachable means no manager answered.
var ErrUnreachable = errors.New("no manager reachable")

func (c *Client) http() *http.Client {
	if c.HTTP != nil {
		return c.HTTP
	}
	return &http.Client{Timeout: 40 * time.Second}
}

// do runs one request against each URL until one answers; a 4xx answer is
// final (the command is wrong), a 5xx one tries the next member.
func (c *Client) do(ctx context.Context, method, path string, body, out any) error {
	var payload []byte
	if body != nil {
		payload, _ = json.Marshal(body)
	}
	var errs []string
	first := int(c.preferred.Load())
	for i := range c.URLs {
		idx := (first + i) % len(c.URLs)
		base := c.URLs[idx]
		// Each member gets its share of what is left of the deadline, so
		// one that hangs cannot use it all up.
		actx, cancel := ctx, context.CancelFunc(func() {})
		if d, ok := ctx.Deadline(); ok {
			actx, cancel = context.WithTimeout(ctx, time.Until(d)/time.Duration(len(c.URLs)-i))
		}
		req, err := http.NewRequestWithContext(actx, method, strings.TrimRight(base, "/")+path, bytes.NewReader(payload))
		if err != nil {
			cancel()
			return err
		}
		req.Header.Set("Content-Type", "application/json")
		resp, err := c.http().Do(req)
		if err != nil {
			cancel()
			errs = append(errs, err.Error())
			continue
		}
		var cr CommandResponse
		func() {
			defer cancel()
			defer resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				err = json.NewDecoder(resp.Body).Decode(out)
				return
			}
			json.NewDecoder(resp.Body).Decode(&cr)
			err = fmt.Errorf("%s: %s %s", base, resp.Status, cr.Error)
		}()
		if err == nil {
			c.preferred.Store(int32(idx))
			return nil
		}
		if resp.StatusCode >= 400 && resp.StatusCode < 500 {
			c.preferred.Store(int32(idx))
			return err
		}
		errs = append(errs, err.Error())
	}
	return fmt.Errorf("%w: %s", ErrUnreachable, strings.Join(errs, "; "))
}

// Tree reads the tree from the first member that answers and knows a
// leader; only when none does is a leaderless member's answer returned
// (a member cut off from the others, or one removed from the cluster,
// still serves what it last applied).
func (c *Client) Tree(ctx context.Context) (*TreeResponse, error) {
	return preferLeader(ctx, c, "/v1/tree", func(tr *TreeResponse) bool { return tr.Leader != "" })
}

func preferLeader[T any](ctx context.Context, c *Client, path string, hasLeader func(*T) bool) (*T, error) {
	var stale *T
	var lastErr error
	for _, u := range c.URLs {
		v := new(T)
		one := &Client{URLs: []string{u}, HTTP: c.HTTP}
		if err := one.do(ctx, http.MethodGet, path, nil, v); err != nil {
			lastErr = err
			continue
		}
		if hasLeader(v) {
			return v, nil
		}
		if stale == nil {
			stale = v
		}
	}
	if stale != nil {
		return stale, nil
	}
	return nil, lastErr
}

// Watch waits for an epoch above epoch (or the server's timeout).
func (c *Client) Watch(ctx context.Context, epoch uint64) (*TreeResponse, error) {
	var tr TreeResponse
	// The server answers within 10 s even when nothing changes, well
	// inside each member's share of a caller's deadline.
	return &tr, c.do(ctx, http.MethodGet, fmt.Sprintf("/v1/watch?epoch=%d&timeout=10s", epoch), nil, &tr)
}

// Apply commits a command through the leader and returns the new epoch.
func (c *Client) Apply(ctx context.Context, cmd Command) (uint64, error) {
	var cr CommandResponse
	err := c.do(ctx, http.MethodPost, "/v1/command", cmd, &cr)
	return cr.Epoch, err
}

// Join asks the cluster to add a member.
func (c *Client) Join(ctx context.Context, j JoinRequest) error {
	var cr CommandResponse
	return c.do(ctx, http.MethodPost, "/v1/join", j, &cr)
}

// Heartbeat reports that the named node is alive, with its positions when
// rep is not nil; the answer lists the slots the node should hold.
func (c *Client) Heartbeat(ctx context.Context, name string, rep *RelayReport) (*HeartbeatResponse, error) {
	var hr HeartbeatResponse
	return &hr, c.do(ctx, http.MethodPost, "/v1/heartbeat", HeartbeatRequest{Name: name, Report: rep}, &hr)
}

// Status reads every node's positions and lag as the leader sees them.
func (c *Client) Status(ctx context.Context) (*StatusResponse, error) {
	var st StatusResponse
	return &st, c.do(ctx, http.MethodGet, "/v1/status", nil, &st)
}

// Members lists the managers in the Raft configuration, preferring a
// member that knows the leader, as Tree does.
func (c *Client) Members(ctx context.Context) (*MembersResponse, error) {
	return preferLeader(ctx, c, "/v1/members", func(mr *MembersResponse) bool { return mr.Leader != "" })
}

// RemoveMember takes a manager out of the cluster.
func (c *Client) RemoveMember(ctx context.Context, id string) error {
	var cr CommandResponse
	return c.do(ctx, http.MethodPost, "/v1/members/remove", LeaveRequest{ID: id}, &cr)
}

// Post sends a JSON request to path on the first member that answers (it is
// forwarded to the leader) and decodes the answer into out.
func (c *Client) Post(ctx context.Context, path string, body, out any) error {
	return c.do(ctx, http.MethodPost, path, body, out)
}

// Replicas asks the replica feed (GET /v1/replicas) of the first member
// that answers; a follower forwards to the leader. The same call works
// against a relay's HTTP address for its own children.
func (c *Client) Replicas(ctx context.Context, q feed.Query) (*feed.Response, error) {
	var resp feed.Response
	path := "/v1/replicas"
	if v := q.Values().Encode(); v != "" {
		path += "?" + v
	}
	return &resp, c.do(ctx, http.MethodGet, path, nil, &resp)
}
