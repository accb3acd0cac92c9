package failover

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/walrelay/walrelay/topology"
	"github.com/walrelay/walrelay/walstream"
)

// SwitchoverRequest is POST /v1/switchover.
type SwitchoverRequest struct {
	To string `json:"to"`
	// Timeout bounds the wait for the candidate to catch up (default 30 s).
	Timeout string `json:"timeout,omitempty"`
}

// SwitchoverResponse says what happened.
type SwitchoverResponse struct {
	Primary  string `json:"primary,omitempty"`
	Timeline uint32 `json:"timeline,omitempty"`
	Fenced   string `json:"fenced,omitempty"`
	// SwitchLSN is where the old primary's writes stopped: every commit
	// up to it is on the new primary.
	SwitchLSN walstream.LSN `json:"switch_lsn,omitempty"`
	Error     string        `json:"error,omitempty"`
}

// API is what Register needs from the manager.
type API interface {
	HandleFunc(pattern string, h http.HandlerFunc)
	Forward(w http.ResponseWriter, r *http.Request, body []byte) bool
}

// Register adds the switchover route to the manager's API.
func (c *Controller) Register(api API) {
	api.HandleFunc("POST /v1/switchover", func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
		var req SwitchoverRequest
		if err := json.Unmarshal(body, &req); err != nil || req.To == "" {
			writeJSON(w, http.StatusBadRequest, SwitchoverResponse{Error: "switchover needs a target standby"})
			return
		}
		if api.Forward(w, r, body) {
			return
		}
		timeout := 30 * time.Second
		if d, err := time.ParseDuration(req.Timeout); err == nil && d > 0 {
			timeout = d
		}
		resp, err := c.Switchover(r.Context(), req.To, timeout)
		if err != nil {
			resp.Error = err.Error()
			code := http.StatusConflict
			if errors.Is(err, errNotLeader) {
				code = http.StatusServiceUnavailable
			}
			writeJSON(w, code, resp)
			return
		}
		writeJSON(w, http.StatusOK, resp)
	})
}

var errNotLeader = errors.New("this manager is not the leader")

// Switchover is a planned change of primary with nothing lost: writes stop
// on the primary (read-only for new transactions, client sessions ended),
// the candidate receives everything up to where they stopped, then it is
// promoted and committed, which fences the old primary. On failure before
// promotion the old primary accepts writes again.
func (c *Controller) Switchover(ctx context.Context, to string, timeout time.Duration) (SwitchoverResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.l.IsLeader() {
		return SwitchoverResponse{}, errNotLeader
	}
	tree := c.l.Tree()
	old := tree.Primary
	n := tree.Nodes[to]
	switch {
	case n == nil:
		return SwitchoverResponse{}, fmt.Errorf("no node %q", to)
	case to == old:
		return SwitchoverResponse{}, fmt.Errorf("%s is already the primary", to)
	case n.Kind != topology.KindStandby || n.State != topology.StateAlive:
		return SwitchoverResponse{}, fmt.Errorf("%s is not an alive registered standby (%s, %s)", to, n.Kind, n.State)
	}
	if o, ok := c.l.Observed(to); !ok || o.Err != nil || !o.InRecovery {
		return SwitchoverResponse{}, fmt.Errorf("%s is not a reachable standby in recovery", to)
	}
	c.log.Warn("switchover: stopping writes on the primary", "primary", old, "to", to)
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	for _, sql := range []string{
		"ALTER SYSTEM SET default_transaction_read_only = on",
		"SELECT pg_reload_conf()",
		// Sessions opened before the reload keep their read-write default:
		// end them (the walsenders are not client backends).
		"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()",
	} {
		if _, err := c.l.Query(qctx, old, sql); err != nil {
			c.resumeWrites(old)
			return SwitchoverResponse{}, fmt.Errorf("stop writes on %s: %w", old, err)
		}
	}
	// New sessions may have started before the reload reached them;
	// a short grace and a second sweep closes that window.
	time.Sleep(200 * time.Millisecond)
	c.l.Query(qctx, old, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()")
	rows, err := c.l.Query(qctx, old, "SELECT pg_current_wal_insert_lsn()")
	if err != nil || len(rows) != 1 {
		c.resumeWrites(old)
		return SwitchoverResponse{}, fmt.Errorf("read the primary's position: %v", err)
	}
	stop, err := walstream.ParseLSN(rows[0][0])
	if err != nil {
		c.resumeWrites(old)
		return SwitchoverResponse{}, err
	}
	if err := c.waitReceived(ctx, to, stop, timeout); err != nil {
		c.resumeWrites(old)
		return SwitchoverResponse{SwitchLSN: stop}, fmt.Errorf("switchover aborted, %s accepts writes again: %w", old, err)
	}
	tli, err := c.promote(ctx, to)
	if err != nil {
		return SwitchoverResponse{SwitchLSN: stop}, err
	}
	if err := c.commitPrimary(ctx, tree, to, tli); err != nil {
		return SwitchoverResponse{SwitchLSN: stop}, err
	}
	return SwitchoverResponse{Primary: to, Timeline: tli, Fenced: old, SwitchLSN: stop}, nil
}

func (c *Controller) resumeWrites(node string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c.l.Query(ctx, node, "ALTER SYSTEM RESET default_transaction_read_only")
	c.l.Query(ctx, node, "SELECT pg_reload_conf()")
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
