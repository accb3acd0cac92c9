package topology

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/hashicorp/raft"
)

//go:embed ui/index.html
var uiPage []byte

// TreeResponse is GET /v1/tree: the tree as this member has applied it.
type TreeResponse struct {
	Tree        *Tree  `json:"tree"`
	Member      string `json:"member"`
	Leader      string `json:"leader"`
	CommitIndex uint64 `json:"commit_index"`
	AppliedIdx  uint64 `json:"applied_index"`
	// Status is the leader's latest view of positions and lag; absent when
	// the leader cannot be asked (the tree itself is still this member's).
	Status *StatusResponse `json:"status,omitempty"`
}

// CommandResponse is POST /v1/command's answer.
type CommandResponse struct {
	Epoch uint64 `json:"epoch"`
	Error string `json:"error,omitempty"`
}

// JoinRequest is POST /v1/join.
type JoinRequest struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTPAddr string `json:"http_addr"`
}

func (m *Manager) api() http.Handler {
	mux := http.NewServeMux()
	m.mux = mux
	mux.HandleFunc("GET /v1/tree", m.handleTree)
	mux.HandleFunc("GET /v1/watch", m.handleWatch)
	mux.HandleFunc("POST /v1/command", m.handleCommand)
	mux.HandleFunc("POST /v1/join", m.handleJoin)
	mux.HandleFunc("POST /v1/heartbeat", m.handleHeartbeat)
	mux.HandleFunc("GET /v1/status", m.handleStatus)
	mux.HandleFunc("GET /v1/members", m.handleMembers)
	mux.HandleFunc("GET /v1/replicas", m.handleReplicas)
	mux.HandleFunc("GET /v1/replicas/{name}/health", m.handleReplicaHealth)
	mux.HandleFunc("POST /v1/members/remove", m.handleRemoveMember)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		// The read-only tree page: one file, no external assets.
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'")
		w.Write(uiPage)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { w.Write([]byte("ok\n")) })
	return mux
}

func (m *Manager) treeResponse() TreeResponse {
	_, leaderID := m.raft.LeaderWithID()
	return TreeResponse{Tree: m.fsm.Tree(), Member: m.cfg.NodeID, Leader: string(leaderID),
		CommitIndex: m.raft.CommitIndex(), AppliedIdx: m.raft.AppliedIndex()}
}

func (m *Manager) handleTree(w http.ResponseWriter, r *http.Request) {
	tr := m.treeResponse()
	if r.URL.Query().Get("status") != "0" {
		tr.Status = m.status(r.Context())
	}
	writeJSON(w, http.StatusOK, tr)
}

// status is the leader's view of positions: computed here when this member
// leads, asked of the leader otherwise (briefly: the tree must be served
// even when the leader is unreachable).
func (m *Manager) status(ctx context.Context) *StatusResponse {
	url, ok := m.leaderURL()
	if !ok {
		return nil
	}
	if url == "" {
		st := m.localStatus()
		return &st
	}
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url+"/v1/status", nil)
	if err != nil {
		return nil
	}
	resp, err := m.client.Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var st StatusResponse
	if resp.StatusCode != http.StatusOK || json.NewDecoder(resp.Body).Decode(&st) != nil {
		return nil
	}
	return &st
}

func (m *Manager) handleStatus(w http.ResponseWriter, r *http.Request) {
	if st := m.status(r.Context()); st != nil {
		writeJSON(w, http.StatusOK, st)
		return
	}
	writeJSON(w, http.StatusServiceUnavailable, CommandResponse{Error: "no leader to ask for node status"})
}

// handleWatch long-polls: it answers once the epoch is above ?epoch= or
// after ?timeout= (default 30 s).
func (m *Manager) handleWatch(w http.ResponseWriter, r *http.Request) {
	epoch, _ := strconv.ParseUint(r.URL.Query().Get("epoch"), 10, 64)
	timeout := 30 * time.Second
	if d, err := time.ParseDuration(r.URL.Query().Get("timeout")); err == nil && d > 0 && d < 5*time.Minute {
		timeout = d
	}
	deadline := time.After(timeout)
	for {
		changed := m.fsm.Changed()
		if m.fsm.Tree().Epoch > epoch {
			break
		}
		select {
		case <-changed:
			continue
		case <-deadline:
		case <-r.Context().Done():
			return
		}
		break
	}
	writeJSON(w, http.StatusOK, m.treeResponse())
}

// leaderURL is the leader's API address, or "" when it is this member or
// unknown.
func (m *Manager) leaderURL() (string, bool) {
	if m.raft.State() == raft.Leader {
		return "", true
	}
	_, id := m.raft.LeaderWithID()
	if id == "" {
		return "", false
	}
	url, ok := m.fsm.Tree().Managers[string(id)]
	return url, ok
}

// forward sends a write to the leader and relays its answer.
func (m *Manager) forward(w http.ResponseWriter, r *http.Request, body []byte) bool {
	url, ok := m.leaderURL()
	if url == "" {
		if !ok {
			writeJSON(w, http.StatusServiceUnavailable, CommandResponse{Error: "no leader: the managers cannot reach a quorum"})
			return true
		}
		return false
	}
	req, err := http.NewRequestWithContext(r.Context(), r.Method, url+r.URL.RequestURI(), bytes.NewReader(body))
	if err != nil {
		writeJSON(w, http.StatusInternalServerError, CommandResponse{Error: err.Error()})
		return true
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := m.client.Do(req)
	if err != nil {
		writeJSON(w, http.StatusBadGateway, CommandResponse{Error: fmt.Sprintf("forward to leader %s: %v", url, err)})
		return true
	}
	defer resp.Body.Close()
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, resp.Body)
	return true
}

func (m *Manager) handleCommand(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
	if err != nil {
		writeJSON(w, http.StatusBadRequest, CommandResponse{Error: err.Error()})
		return
	}
	var c Command
	if err := json.Unmarshal(body, &c); err != nil {
		writeJSON(w, http.StatusBadRequest, CommandResponse{Error: "invalid command: " + err.Error()})
		return
	}
	if m.forward(w, r, body) {
		return
	}
	f := m.raft.Apply(c.Encode(), 10*time.Second)
	if err := f.Error(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, CommandResponse{Error: err.Error()})
		return
	}
	res := f.Response().(ApplyResult)
	if res.Err != nil {
		writeJSON(w, http.StatusConflict, CommandResponse{Epoch: res.Epoch, Error: res.Err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, CommandResponse{Epoch: res.Epoch})
}

func (m *Manager) handleJoin(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	var j JoinRequest
	if err := json.Unmarshal(body, &j); err != nil || j.ID == "" || j.RaftAddr == "" || j.HTTPAddr == "" {
		writeJSON(w, http.StatusBadRequest, CommandResponse{Error: "join needs id, raft_addr and http_addr"})
		return
	}
	if m.forward(w, r, body) {
		return
	}
	if err := m.raft.AddVoter(raft.ServerID(j.ID), raft.ServerAddress(j.RaftAddr), 0, 10*time.Second).Error(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, CommandResponse{Error: "add voter: " + err.Error()})
		return
	}
	f := m.raft.Apply(Command{Op: OpManager, Name: j.ID, Conninfo: j.HTTPAddr}.Encode(), 10*time.Second)
	if err := f.Error(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, CommandResponse{Error: err.Error()})
		return
	}
	m.log.Info("member joined", "id", j.ID, "raft", j.RaftAddr, "http", j.HTTPAddr)
	writeJSON(w, http.StatusOK, CommandResponse{Epoch: f.Response().(ApplyResult).Epoch})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}
