package failover

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"reflect"
	"testing"
	"time"

	"github.com/walrelay/walrelay/topology"
)

// fakeLeader is a manager as far as following Patroni needs one.
type fakeLeader struct {
	tree    *topology.Tree
	obs     map[string]topology.Observation
	applied []topology.Command
}

func (f *fakeLeader) IsLeader() bool         { return true }
func (f *fakeLeader) Tree() *topology.Tree   { return f.tree }
func (f *fakeLeader) PrimarySeen() time.Time { return time.Now() }
func (f *fakeLeader) RelayReports() map[string]topology.RelayObservation {
	return nil
}
func (f *fakeLeader) Observed(name string) (topology.Observation, bool) {
	o, ok := f.obs[name]
	return o, ok
}
func (f *fakeLeader) Apply(_ context.Context, c topology.Command) (uint64, error) {
	f.applied = append(f.applied, c)
	return 0, nil
}
func (f *fakeLeader) Query(context.Context, string, string) ([][]string, error) { return nil, nil }

func patroniAPI(t *testing.T, body *string) string {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/cluster" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, *body)
	}))
	t.Cleanup(srv.Close)
	return srv.URL
}

func TestFollowPatroni(t *testing.T) {
	tree := &topology.Tree{Primary: "pg1", Timeline: 1, Nodes: map[string]*topology.Node{
		"pg1": {Name: "pg1", Kind: topology.KindPrimary, State: topology.StateAlive, External: true, Conninfo: "host=127.0.0.1 port=5432"},
		"pg2": {Name: "pg2", Kind: topology.KindStandby, State: topology.StateAlive, External: true, Conninfo: "host=127.0.0.1 port=5433"},
	}}
	body := `{"members": [{"name": "pg1", "role": "replica", "state": "running", "host": "127.0.0.1", "port": 5432, "timeline": 1},
		{"name": "pg2", "role": "leader", "state": "running", "host": "127.0.0.1", "port": 5433, "timeline": 2}]}`
	f := &fakeLeader{tree: tree, obs: map[string]topology.Observation{"pg2": {At: time.Now(), InRecovery: true, Timeline: 1}}}
	c := New(f, Config{Mode: ModeExternal, PatroniURLs: []string{"http://127.0.0.1:1", patroniAPI(t, &body)}})
	ctx := context.Background()

	// Patroni names pg2 before its promotion has ended: wait.
	if !c.followPatroni(ctx, tree) || len(f.applied) != 0 {
		t.Fatalf("leader still in recovery: applied %+v", f.applied)
	}
	// Promoted: committed as the primary, still external.
	f.obs["pg2"] = topology.Observation{At: time.Now(), Timeline: 2}
	if !c.followPatroni(ctx, tree) || len(f.applied) != 1 {
		t.Fatalf("leader out of recovery: applied %+v", f.applied)
	}
	if got := f.applied[0]; got.Op != topology.OpSetPrimary || got.Name != "pg2" || got.Timeline != 2 || !got.External {
		t.Fatalf("committed %+v", got)
	}
	// The tree as the FSM leaves it: pg1 fenced. Patroni lists it as a
	// replica on timeline 1 only: still fenced.
	tree.Primary, tree.Timeline = "pg2", 2
	tree.Nodes["pg2"].Kind, tree.Nodes["pg1"].Kind, tree.Nodes["pg1"].State = topology.KindPrimary, topology.KindStandby, topology.StateFenced
	f.applied = nil
	if c.followPatroni(ctx, tree) || len(f.applied) != 0 {
		t.Fatalf("old leader on the old timeline: applied %+v", f.applied)
	}
	// Rewound and a replica on timeline 2: unfenced.
	body = `{"members": [{"name": "pg1", "role": "replica", "state": "streaming", "host": "127.0.0.1", "port": 5432, "timeline": 2},
		{"name": "pg2", "role": "leader", "state": "running", "host": "127.0.0.1", "port": 5433, "timeline": 2}]}`
	if c.followPatroni(ctx, tree) || len(f.applied) != 1 || f.applied[0].Op != topology.OpSetState || f.applied[0].Name != "pg1" || f.applied[0].State != topology.StateAlive {
		t.Fatalf("old leader a replica again: applied %+v", f.applied)
	}
	// A leader known only by address is found by its conninfo.
	if got := patroniNode(tree, patroniMember{Name: "other-name", Host: "127.0.0.1", Port: 5433}); got != "pg2" {
		t.Errorf("member by address: %q", got)
	}
}

// External nodes are never placed: Patroni decides where they stream from.
func TestPlacementLeavesExternalNodes(t *testing.T) {
	tree := &topology.Tree{Primary: "pg1", Timeline: 1, Nodes: map[string]*topology.Node{
		"pg1": {Name: "pg1", Kind: topology.KindPrimary, State: topology.StateAlive},
		"r1":  {Name: "r1", Kind: topology.KindRelay, State: topology.StateAlive},
		"pg2": {Name: "pg2", Kind: topology.KindStandby, State: topology.StateAlive, External: true},
		"s1":  {Name: "s1", Kind: topology.KindStandby, State: topology.StateAlive},
	}}
	got := topology.Place(tree, topology.Policy{})
	if _, ok := got["pg2"]; ok {
		t.Errorf("placement assigned the external pg2: %v", got)
	}
	if got["s1"] != "r1" {
		t.Errorf("placement put s1 under %q, want r1", got["s1"])
	}
}

// The same view read from Patroni's keys in etcd (v3 JSON gateway).
func TestPatroniDCS(t *testing.T) {
	kv := func(k, v string) map[string]string {
		return map[string]string{"key": base64.StdEncoding.EncodeToString([]byte(k)), "value": base64.StdEncoding.EncodeToString([]byte(v))}
	}
	var asked map[string]string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v3/kv/range" {
			http.NotFound(w, r)
			return
		}
		json.NewDecoder(r.Body).Decode(&asked)
		json.NewEncoder(w).Encode(map[string]any{"kvs": []map[string]string{
			kv("/service/walrelay/config", `{"ttl":10}`),
			kv("/service/walrelay/leader", "pg2"),
			kv("/service/walrelay/members/pg1", `{"conn_url":"postgres://127.0.0.1:5432/postgres","state":"running","role":"replica","timeline":2}`),
			kv("/service/walrelay/members/pg2", `{"conn_url":"postgres://127.0.0.1:5433/postgres","state":"running","role":"master","timeline":2}`),
		}})
	}))
	defer srv.Close()
	got, err := patroniDCS(context.Background(), srv.URL+"/service/walrelay")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := base64.StdEncoding.DecodeString(asked["key"])
	end, _ := base64.StdEncoding.DecodeString(asked["range_end"])
	if string(key) != "/service/walrelay/" || string(end) != "/service/walrelay0" {
		t.Errorf("asked for the range %q-%q", key, end)
	}
	want := []patroniMember{
		{Name: "pg1", Role: "replica", State: "running", Host: "127.0.0.1", Port: 5432, Timeline: 2},
		{Name: "pg2", Role: "leader", State: "running", Host: "127.0.0.1", Port: 5433, Timeline: 2},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("members %+v, want %+v", got, want)
	}
	if _, err := patroniDCS(context.Background(), srv.URL); err == nil {
		t.Error("a DCS URL without namespace and scope was accepted")
	}
}
