package topology

import (
	"encoding/json"
	"io"
	"net/http"
	"time"

	"github.com/hashicorp/raft"
)

// Member is one manager in the Raft configuration.
type Member struct {
	ID       string `json:"id"`
	RaftAddr string `json:"raft_addr"`
	HTTP     string `json:"http,omitempty"`
	Voter    bool   `json:"voter"`
	Leader   bool   `json:"leader"`
}

// MembersResponse is GET /v1/members.
type MembersResponse struct {
	Leader  string   `json:"leader"`
	Members []Member `json:"members"`
}

// LeaveRequest is POST /v1/members/remove.
type LeaveRequest struct {
	ID string `json:"id"`
}

func (m *Manager) handleMembers(w http.ResponseWriter, _ *http.Request) {
	f := m.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, CommandResponse{Error: err.Error()})
		return
	}
	_, leader := m.raft.LeaderWithID()
	managers := m.fsm.Tree().Managers
	out := MembersResponse{Leader: string(leader)}
	for _, s := range f.Configuration().Servers {
		out.Members = append(out.Members, Member{ID: string(s.ID), RaftAddr: string(s.Address),
			HTTP: managers[string(s.ID)], Voter: s.Suffrage == raft.Voter, Leader: s.ID == leader})
	}
	writeJSON(w, http.StatusOK, out)
}

// handleRemoveMember takes a manager out of the Raft configuration and
// forgets its API address. Removing the leader itself is allowed: Raft
// steps it down and the others elect a new one.
func (m *Manager) handleRemoveMember(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(io.LimitReader(r.Body, 1<<16))
	var req LeaveRequest
	if err := json.Unmarshal(body, &req); err != nil || req.ID == "" {
		writeJSON(w, http.StatusBadRequest, CommandResponse{Error: "remove needs a member id"})
		return
	}
	if m.forward(w, r, body) {
		return
	}
	cf := m.raft.GetConfiguration()
	if err := cf.Error(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, CommandResponse{Error: err.Error()})
		return
	}
	found := false
	for _, s := range cf.Configuration().Servers {
		found = found || string(s.ID) == req.ID
	}
	if !found {
		writeJSON(w, http.StatusNotFound, CommandResponse{Error: "no member " + req.ID})
		return
	}
	// Forget the address first: once the leader removes itself it can no
	// longer commit anything.
	f := m.raft.Apply(Command{Op: OpManager, Name: req.ID}.Encode(), 10*time.Second)
	if err := f.Error(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, CommandResponse{Error: err.Error()})
		return
	}
	if err := m.raft.RemoveServer(raft.ServerID(req.ID), 0, 10*time.Second).Error(); err != nil {
		writeJSON(w, http.StatusServiceUnavailable, CommandResponse{Error: "remove member: " + err.Error()})
		return
	}
	m.log.Info("member removed", "id", req.ID)
	writeJSON(w, http.StatusOK, CommandResponse{Epoch: f.Response().(ApplyResult).Epoch})
}
