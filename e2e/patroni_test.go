package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// etcdProc is a one-member etcd for Patroni's DCS, on loopback.
func startEtcd(t *testing.T, bin string) string {
	t.Helper()
	cport, _ := pgcluster.FreePort()
	pport, _ := pgcluster.FreePort()
	dir := testDir(t)
	client := fmt.Sprintf("http://127.0.0.1:%d", cport)
	peer := fmt.Sprintf("http://127.0.0.1:%d", pport)
	startBackground(t, "etcd", filepath.Join(dir, "etcd.log"), nil, bin, "--name", "e1", "--data-dir", filepath.Join(dir, "etcd"),
		"--listen-client-urls", client, "--advertise-client-urls", client,
		"--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer, "--initial-cluster", "e1="+peer)
	waitFor(t, 30*time.Second, "etcd answering", func() (bool, error) {
		resp, err := http.Get(client + "/health")
		if err != nil {
			return false, nil
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK, nil
	})
	return fmt.Sprintf("127.0.0.1:%d", cport)
}

func postgresUser(t *testing.T) *syscall.Credential {
	t.Helper()
	if os.Geteuid() != 0 {
		return nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		t.Fatal(err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
}

// patroniMember is one Patroni member: its REST API and its PostgreSQL.
type patroniMember struct {
	name, api, cfg string
	pg             *pgcluster.Cluster
}

// startPatroni runs one Patroni member (as user postgres) of scope walrelay
// with etcd as its DCS, and the Debian package's PostgreSQL.
func startPatroni(t *testing.T, bin, etcd, name string) *patroniMember {
	t.Helper()
	cred := postgresUser(t)
	base := filepath.Join(testDir(t), "patroni")
	if err := os.MkdirAll(base, 0o755); err != nil {
		t.Fatal(err)
	}
	// Patroni runs as postgres: it must reach and write its directory.
	for d := base; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
			os.Chmod(d, fi.Mode().Perm()|0o011)
		}
	}
	if cred != nil {
		os.Chown(base, int(cred.Uid), int(cred.Gid))
	}
	apiPort, _ := pgcluster.FreePort()
	pgPort, _ := pgcluster.FreePort()
	dataDir := filepath.Join(base, name)
	cfg := fmt.Sprintf(`scope: walrelay
name: %[1]s
restapi:
  listen: 127.0.0.1:%[2]d
  connect_address: 127.0.0.1:%[2]d
etcd3:
  hosts: %[3]s
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 1
    retry_timeout: 5
    maximum_lag_on_failover: 104857600
    ignore_slots:
    - {name: walrelay_r1, type: physical}
    - {name: walrelay_r2, type: physical}
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: 'on'
        wal_keep_size: 512MB
        max_wal_senders: 20
        max_replication_slots: 20
        fsync: 'off'
  initdb:
  - encoding: UTF8
  pg_hba:
  - host replication all 127.0.0.1/32 trust
  - host all all 127.0.0.1/32 trust
postgresql:
  listen: 127.0.0.1:%[4]d
  connect_address: 127.0.0.1:%[4]d
  data_dir: %[5]s
  bin_dir: %[6]s
  pgpass: %[7]s
  authentication:
    superuser: {username: postgres, password: walrelay}
    replication: {username: postgres, password: walrelay}
    rewind: {username: postgres, password: walrelay}
  parameters:
    unix_socket_directories: ''
`, name, apiPort, etcd, pgPort, dataDir, bin, filepath.Join(base, name+".pgpass"))
	cfgPath := filepath.Join(base, name+".yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	startBackground(t, "patroni "+name, filepath.Join(base, name+".log"), cred, "patroni", cfgPath)
	pg, err := pgcluster.Open(name, bin, dataDir, pgPort, filepath.Join(base, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	return &patroniMember{name: name, api: fmt.Sprintf("http://127.0.0.1:%d", apiPort), cfg: cfgPath, pg: pg}
}

type patroniClusterView struct {
	Members []struct {
		Name     string `json:"name"`
		Role     string `json:"role"`
		State    string `json:"state"`
		Timeline int    `json:"timeline"`
	} `json:"members"`
}

// patroniLeader is the member Patroni's REST API names leader, and the
// roles of all.
func patroniLeader(api string) (leader string, roles map[string]string) {
	resp, err := http.Get(api + "/cluster")
	if err != nil {
		return "", nil
	}
	defer resp.Body.Close()
	var v patroniClusterView
	if json.NewDecoder(resp.Body).Decode(&v) != nil {
		return "", nil
	}
	roles = map[string]string{}
	for _, m := range v.Members {
		roles[m.Name] = m.Role + "/" + m.State + "/" + strconv.Itoa(m.Timeline)
		if m.Role == "leader" && m.State == "running" {
			leader = m.Name
		}
	}
	return leader, roles
}

// A two-member Patroni cluster (its own etcd) is the primary side; the
// walrelay manager runs with --promotion external and follows the leader
// Patroni's REST API names. Two relays and two plain standbys hang below.
// After a patronictl switchover, a patronictl failover and a SIGKILL of the
// leader's postgres, the relays stream from Patroni's leader, the standbys
// reach its timeline with every acknowledged write and equal tables, the
// old leader is never followed while fenced and is unfenced once Patroni
// runs it as a replica, and `walrelay tree` and `patronictl list` agree on
// who leads.
//
// The managers learn the leader from Patroni's REST API in one subtest and
// from its keys in etcd in the other.
func TestPatroniLeaderIsFollowed(t *testing.T) {
	t.Parallel()
	for _, via := range []string{"rest", "dcs"} {
		t.Run(via, func(t *testing.T) {
			t.Parallel() // waits on Patroni's loop and timers more than it uses the CPU
			patroniScenario(t, via)
		})
	}
}

func patroniScenario(t *testing.T, via string) {
	bin := requirePG(t)
	requireTool(t, "patroni", "patroni")
	etcdBin := requireTool(t, "etcd", "etcd-server")
	ctx := context.Background()
	etcd := startEtcd(t, etcdBin)
	members := map[string]*patroniMember{}
	for _, name := range []string{"pg1", "pg2"} {
		members[name] = startPatroni(t, bin, etcd, name)
		if name == "pg1" {
			waitFor(t, 90*time.Second, "pg1 Patroni's leader", func() (bool, error) {
				l, _ := patroniLeader(members["pg1"].api)
				return l == "pg1", nil
			})
		}
	}
	waitFor(t, 90*time.Second, "pg2 a running replica", func() (bool, error) {
		_, roles := patroniLeader(members["pg1"].api)
		return strings.HasPrefix(roles["pg2"], "replica/running") || strings.HasPrefix(roles["pg2"], "replica/streaming"), nil
	})
	pg1, pg2 := members["pg1"].pg, members["pg2"].pg
	if err := pg1.PgbenchInit(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := pg1.Exec(ctx, "CREATE TABLE acked(id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}

	source := []string{"--patroni-url", members["pg1"].api + "," + members["pg2"].api}
	if via == "dcs" {
		source = []string{"--patroni-dcs", "http://" + etcd + "/service/walrelay"}
	}
	mgr := startManagerProc(t, "m1", "", append([]string{"--promotion", "external"}, source...)...)
	waitFor(t, 20*time.Second, "manager leader", func() (bool, error) {
		_, err := walrelayCLI("tree", "--manager", mgr.url)
		return err == nil, nil
	})
	cliT(t, "primary", "set", "pg1", "--conninfo", pg1.ConnString(), "--external", "--manager", mgr.url)
	cliT(t, "standby", "add", "pg2", "--conninfo", pg2.ConnString(), "--external", "--manager", mgr.url)
	relays := map[string]*relayProc{}
	for _, id := range []string{"r1", "r2"} {
		relays[id] = startRelay(t, id, "", "--manager", mgr.url)
	}
	standbys := map[string]*pgcluster.Cluster{}
	for _, name := range []string{"s1", "s2"} {
		sb, err := pgcluster.BaseBackupFrom(ctx, bin, "127.0.0.1", pg1.Port, pgcluster.Options{BaseDir: clusterBase(t), Name: name,
			Conf: map[string]string{"wal_retrieve_retry_interval": "1s"}})
		if err != nil {
			t.Fatal(err)
		}
		startCluster(t, sb)
		standbys[name] = sb
		cliT(t, "standby", "add", name, "--conninfo", sb.ConnString(), "--manager", mgr.url)
	}
	waitFor(t, 90*time.Second, "standbys streaming from the relays", func() (bool, error) {
		for _, sb := range standbys {
			port, streaming, err := receiverOf(ctx, sb)
			if err != nil || !streaming || (port != relays["r1"].Port() && port != relays["r2"].Port()) {
				return false, nil
			}
		}
		return true, nil
	})
	t.Logf("tree:\n%s", cliT(t, "tree", "--manager", mgr.url))

	// The relays become synchronous standbys the way an operator names
	// them to Patroni: in its DCS configuration, with synchronous_mode off
	// (Patroni then leaves synchronous_standby_names as configured). Every
	// commit waits for the other Patroni member and one relay, so neither
	// Patroni's choice of a new leader nor the relays lose a commit.
	pgTool(t, "/usr/bin", "patronictl", "-c", members["pg1"].cfg, "edit-config", "--force",
		"-p", "synchronous_standby_names="+patroniSyncNames)
	waitFor(t, 30*time.Second, "Patroni's synchronous_standby_names on pg1", func() (bool, error) {
		return showSetting(ctx, pg1, "synchronous_standby_names") == patroniSyncNames, nil
	})

	var leader atomic.Pointer[pgcluster.Cluster]
	leader.Store(pg1)
	w := startAckWriter(leader.Load)
	var finishOnce sync.Once
	finishWriter := func() { finishOnce.Do(func() { w.finish() }) }
	defer finishWriter()
	// follows checks that the managers, the relays and the standbys follow
	// Patroni's leader on the timeline it writes on, and that nothing follows old.
	follows := func(step, want, old string) {
		t.Helper()
		started := time.Now()
		waitFor(t, 90*time.Second, step+": Patroni leader "+want, func() (bool, error) {
			l, _ := patroniLeader(members[want].api)
			return l == want, nil
		})
		leader.Store(members[want].pg)
		// Patroni publishes the leader's new timeline a moment after the
		// leader key, and restarts a crashed leader read-only on its old
		// timeline before it promotes it: wait until the leader writes,
		// and Patroni and the tree both name the timeline it writes on.
		waitFor(t, 60*time.Second, step+": the managers commit "+want+" on its timeline", func() (bool, error) {
			l, roles := patroniLeader(members[want].api)
			if l != want {
				return false, nil
			}
			tli, ok := writingTimeline(ctx, members[want].pg)
			if !ok || roles[want] != "leader/running/"+strconv.Itoa(tli) {
				return false, nil
			}
			tr, err := treeJSON(mgr.url)
			return err == nil && tr.Tree.Primary == want && int(tr.Tree.Timeline) == tli, nil
		})
		np := members[want].pg
		for id, r := range relays {
			waitFor(t, 60*time.Second, step+": relay "+id+" streaming from "+want, func() (bool, error) {
				up, _ := r.Status(t)["upstream"].(map[string]any)
				target, _ := up["target"].(string)
				return up["state"] == "streaming" && strings.Contains(target, fmt.Sprintf("port=%d", np.Port)), nil
			})
		}
		tr, _ := treeJSON(mgr.url)
		for i := 0; i < 20; i++ { // a few seconds: nothing goes back to old
			for id, r := range relays {
				up, _ := r.Status(t)["upstream"].(map[string]any)
				if target, _ := up["target"].(string); old != "" && strings.Contains(target, fmt.Sprintf("port=%d", members[old].pg.Port)) {
					t.Fatalf("%s: relay %s streams from the old leader %s (%s in the tree)", step, id, old, tr.Tree.Nodes[old].State)
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		acked := w.acked.Load()
		assertOnTimeline(t, np, tr.Tree.Timeline, standbys["s1"], standbys["s2"])
		for _, sb := range standbys {
			assertAcked(t, sb, acked)
		}
		// patronictl list and walrelay tree agree on who leads.
		list := pgTool(t, "/usr/bin", "patronictl", "-c", members[want].cfg, "list")
		for _, line := range strings.Split(list, "\n") {
			if strings.Contains(line, "Leader") && !strings.Contains(line, "| "+want+" ") {
				t.Errorf("%s: patronictl list shows another leader than the tree's %s:\n%s", step, want, list)
			}
		}
		t.Logf("%s: %s leads on timeline %d, followed by the managers, relays and standbys %.1fs after the step; %d acknowledged commits on every standby",
			step, want, tr.Tree.Timeline, time.Since(started).Seconds(), acked)
	}
	waitForAcks := func() {
		n := w.acked.Load()
		waitFor(t, 30*time.Second, "more acknowledged commits", func() (bool, error) { return w.acked.Load() >= n+20, nil })
	}

	waitForAcks()
	pgTool(t, "/usr/bin", "patronictl", "-c", members["pg1"].cfg, "switchover", "--leader", "pg1", "--candidate", "pg2", "--force")
	follows("patronictl switchover", "pg2", "pg1")
	// The old leader is fenced until Patroni runs it as a replica again.
	waitFor(t, 90*time.Second, "pg1 unfenced once a replica of pg2", func() (bool, error) {
		tr, err := treeJSON(mgr.url)
		return err == nil && tr.Tree.Nodes["pg1"].State == "alive", nil
	})
	_, roles := patroniLeader(members["pg2"].api)
	if !strings.HasPrefix(roles["pg1"], "replica/") {
		t.Errorf("pg1 unfenced while Patroni says %q", roles["pg1"])
	}

	waitForAcks()
	pgTool(t, "/usr/bin", "patronictl", "-c", members["pg1"].cfg, "failover", "--candidate", "pg1", "--force")
	follows("patronictl failover", "pg1", "pg2")

	// SIGKILL of the leader's postgres: Patroni restarts it or fails over;
	// either way everything follows the leader it names.
	waitForAcks()
	pid, err := readPostmasterPID(pg1.DataDir)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	// Patroni has decided once another member leads, or once pg1 leads
	// with a postmaster it started after the kill: until it notices, its
	// view still shows pg1 leading and running.
	var now string
	waitFor(t, 90*time.Second, "a Patroni leader after the SIGKILL", func() (bool, error) {
		now, _ = patroniLeader(members["pg2"].api)
		if now != "pg1" {
			return now != "", nil
		}
		p, err := readPostmasterPID(pg1.DataDir)
		return err == nil && p != pid, nil
	})
	old := "" // restarted by Patroni (on a new timeline)
	if now != "pg1" {
		old = "pg1"
	}
	follows("SIGKILL of the leader's postgres", now, old)
	finishWriter()
	commitsWaitForRelays(t, members[now].pg, relays)
}

// patroniSyncNames names both Patroni members first (the leader's own name
// matches no walsender) and the relays after them: a commit returns once
// the Patroni replica and one relay have flushed it.
const patroniSyncNames = "FIRST 2 (pg1, pg2, r1, r2)"

// writingTimeline is the timeline c writes WAL on, and false while c is
// in recovery or does not answer.
func writingTimeline(ctx context.Context, c *pgcluster.Cluster) (int, bool) {
	conn, err := c.Connect(ctx)
	if err != nil {
		return 0, false
	}
	defer conn.Close(ctx)
	var seg string // pg_walfile_name refuses to run during recovery
	if conn.QueryRow(ctx, "SELECT pg_walfile_name(pg_current_wal_lsn())").Scan(&seg) != nil || len(seg) < 8 {
		return 0, false
	}
	tli, err := strconv.ParseUint(seg[:8], 16, 32)
	return int(tli), err == nil
}

// showSetting is a setting's value on c, or "" when c does not answer.
func showSetting(ctx context.Context, c *pgcluster.Cluster, name string) string {
	conn, err := c.Connect(ctx)
	if err != nil {
		return ""
	}
	defer conn.Close(ctx)
	var v string
	if conn.QueryRow(ctx, "SELECT current_setting($1)", name).Scan(&v) != nil {
		return ""
	}
	return v
}

// commitsWaitForRelays shows what a commit on Patroni's leader waits for
// with the relays in synchronous_standby_names: with every relay down it
// waits (in SyncRep) although the Patroni replica has it; it returns once a
// relay is back and has the commit durable in its store.
func commitsWaitForRelays(t *testing.T, leader *pgcluster.Cluster, relays map[string]*relayProc) {
	t.Helper()
	ctx := context.Background()
	conn, err := leader.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	rows, err := conn.Query(ctx, "SELECT application_name, sync_state FROM pg_stat_replication ORDER BY application_name")
	if err != nil {
		t.Fatal(err)
	}
	states := map[string]string{}
	for rows.Next() {
		var name, state string
		if err := rows.Scan(&name, &state); err != nil {
			t.Fatal(err)
		}
		states[name] = state
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	if v := showSetting(ctx, leader, "synchronous_standby_names"); v != patroniSyncNames {
		t.Errorf("Patroni's leader %s has synchronous_standby_names %q after the leader changes, configured %q", leader.Name, v, patroniSyncNames)
	}
	t.Logf("%s's walsenders with synchronous_standby_names = %q: %v", leader.Name, patroniSyncNames, states)
	if states["r1"] != "sync" && states["r2"] != "sync" {
		t.Fatalf("no relay is a synchronous standby of %s: %v", leader.Name, states)
	}

	for _, r := range relays {
		r.Kill()
	}
	var pid int
	if err := conn.QueryRow(ctx, "SELECT pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	type result struct {
		lsn string
		err error
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		// The LSN read before COMMIT is before the commit record, which a
		// synchronous standby has flushed when COMMIT returns.
		var lsn string
		tx, err := conn.Begin(ctx)
		if err == nil {
			_, err = tx.Exec(ctx, "CREATE TABLE patroni_sync_commit (t timestamptz DEFAULT now())")
		}
		if err == nil {
			err = tx.QueryRow(ctx, "SELECT pg_current_wal_insert_lsn()::text").Scan(&lsn)
		}
		if err == nil {
			err = tx.Commit(ctx)
		}
		done <- result{lsn, err}
	}()
	watch, err := leader.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close(ctx)
	waitFor(t, 30*time.Second, "the commit waiting for a synchronous standby", func() (bool, error) {
		select {
		case r := <-done:
			return false, fmt.Errorf("the commit returned with every relay down (%v): it did not wait for them", r.err)
		default:
		}
		var wait string
		err := watch.QueryRow(ctx, "SELECT coalesce(wait_event, '') FROM pg_stat_activity WHERE pid = $1", pid).Scan(&wait)
		return err == nil && wait == "SyncRep", nil
	})
	time.Sleep(2 * time.Second) // still waiting, though the Patroni replica is up
	// Two Patroni loops have passed with the relays' slots inactive:
	// ignore_slots keeps them.
	var slots int
	if err := watch.QueryRow(ctx, "SELECT count(*) FROM pg_replication_slots WHERE slot_name IN ('walrelay_r1', 'walrelay_r2') AND NOT active").Scan(&slots); err != nil || slots != 2 {
		t.Errorf("the relays' slots on %s while they are down: %d inactive (%v), want 2 kept by ignore_slots", leader.Name, slots, err)
	}
	select {
	case r := <-done:
		t.Fatalf("the commit returned with every relay down (%v)", r.err)
	default:
	}
	waited := time.Since(start)
	relays["r1"].Restart(t)
	var r result
	select {
	case r = <-done:
	case <-time.After(60 * time.Second):
		t.Fatal("the commit did not return within 60 s of relay r1's restart")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	lsn, _ := pgcluster.ParseLSN(r.lsn)
	if d := relayDurable(t, relays["r1"]); d < lsn {
		t.Errorf("the commit returned before relay r1 had it durable: r1 at %s, the transaction's WAL up to %s", pgcluster.FormatLSN(d), r.lsn)
	}
	t.Logf("with both relays down a commit on %s waited in SyncRep for %.1fs; it returned %.1fs after relay r1 restarted, with r1 durable past it",
		leader.Name, waited.Seconds(), time.Since(start).Seconds()-waited.Seconds())
}
