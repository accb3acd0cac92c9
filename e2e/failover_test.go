package e2e

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/walrelay/walrelay/internal/pgcluster"
)

// managedTree is a primary, a manager, relays and managed standbys, all
// streaming where the manager placed them.
type managedTree struct {
	primary  *pgcluster.Cluster
	mgr      *managerProc
	relays   map[string]*relayProc
	standbys map[string]*pgcluster.Cluster
	// nodes maps every PostgreSQL node's name to its cluster (the
	// primary too), whatever its role becomes.
	nodes map[string]*pgcluster.Cluster
}

type standbySpec struct {
	name       string
	promotable bool
	parent     string // pin under this relay ("" lets placement decide)
	zone, tier string
}

func newManagedTree(t testing.TB, primaryConf map[string]string, mgrArgs []string, relayIDs []string, specs []standbySpec) *managedTree {
	t.Helper()
	ctx := context.Background()
	// pg_rewind of a former primary (switchover) needs wal_log_hints and
	// its WAL back to the last common checkpoint (wal_keep_size). Other
	// settings are applied once the relays stream: synchronous_standby_names
	// naming them would hold every commit before.
	mt := &managedTree{primary: newPrimary(t, "pg", map[string]string{"wal_log_hints": "on", "wal_keep_size": "512MB"}), relays: map[string]*relayProc{},
		standbys: map[string]*pgcluster.Cluster{}, nodes: map[string]*pgcluster.Cluster{}}
	mt.nodes["pg"] = mt.primary
	if err := mt.primary.PgbenchInit(ctx, 1); err != nil {
		t.Fatal(err)
	}
	if err := mt.primary.Exec(ctx, "CREATE TABLE acked(id bigint PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	mt.mgr = startManagerProc(t, "m1", "", mgrArgs...)
	waitFor(t, 20*time.Second, "manager leader", func() (bool, error) {
		_, err := walrelayCLI("tree", "--manager", mt.mgr.url)
		return err == nil, nil
	})
	cliT(t, "primary", "set", "pg", "--conninfo", mt.primary.ConnString(), "--manager", mt.mgr.url)
	for _, id := range relayIDs {
		mt.relays[id] = startRelay(t, id, "", "--manager", mt.mgr.url, "--log-level", "info")
	}
	waitFor(t, 30*time.Second, "relays streaming", func() (bool, error) {
		tr, err := treeJSON(mt.mgr.url)
		if err != nil || tr.Status == nil {
			return false, nil
		}
		for id := range mt.relays {
			if !tr.Status.Nodes[id].Streaming {
				return false, nil
			}
		}
		return true, nil
	})
	for k, v := range primaryConf {
		if err := mt.primary.Exec(ctx, fmt.Sprintf("ALTER SYSTEM SET %s = '%s'", k, v)); err != nil {
			t.Fatal(err)
		}
	}
	if err := mt.primary.Exec(ctx, "SELECT pg_reload_conf()"); err != nil {
		t.Fatal(err)
	}
	for _, sp := range specs {
		sb := newStandbyWith(t, mt.primary, sp.name, mt.primary.ReplicationConnString(), map[string]string{"wal_retrieve_retry_interval": "1s"})
		mt.standbys[sp.name], mt.nodes[sp.name] = sb, sb
		args := []string{"standby", "add", sp.name, "--conninfo", sb.ConnString(), "--manager", mt.mgr.url}
		if sp.promotable {
			args = append(args, "--promotable")
		}
		if sp.zone != "" {
			args = append(args, "--zone", sp.zone)
		}
		if sp.tier != "" {
			args = append(args, "--tier", sp.tier)
		}
		cliT(t, args...)
		if sp.parent != "" {
			cliT(t, "move", sp.name, "--to", sp.parent, "--manager", mt.mgr.url)
		}
	}
	waitFor(t, 60*time.Second, "standbys streaming from their relays", func() (bool, error) {
		tr, err := treeJSON(mt.mgr.url)
		if err != nil {
			return false, nil
		}
		for name, sb := range mt.standbys {
			r := mt.relays[tr.Tree.Nodes[name].Parent]
			if r == nil {
				return false, nil
			}
			port, streaming, err := receiverOf(ctx, sb)
			if err != nil || !streaming || port != r.Port() {
				return false, nil
			}
		}
		return true, nil
	})
	return mt
}

// currentPrimary is the node the managers have committed as primary.
func (mt *managedTree) currentPrimary(t testing.TB) (string, uint32) {
	t.Helper()
	tr, err := treeJSON(mt.mgr.url)
	if err != nil {
		t.Fatal(err)
	}
	return tr.Tree.Primary, tr.Tree.Timeline
}

// waitNewPrimary waits until the managers commit a primary other than old
// and returns it.
func (mt *managedTree) waitNewPrimary(t testing.TB, old string, timeout time.Duration) (string, uint32) {
	t.Helper()
	var name string
	var tli uint32
	waitFor(t, timeout, "a new primary committed", func() (bool, error) {
		tr, err := treeJSON(mt.mgr.url)
		if err != nil {
			return false, nil
		}
		name, tli = tr.Tree.Primary, tr.Tree.Timeline
		return name != old && name != "", nil
	})
	return name, tli
}

// ackWriter inserts increasing ids, one transaction each, into acked on
// whatever primary() returns, and remembers the highest id whose commit was
// acknowledged: every id up to it must survive any failover.
type ackWriter struct {
	primary func() *pgcluster.Cluster
	acked   atomic.Int64
	stop    chan struct{}
	done    chan struct{}

	gapMu   sync.Mutex
	lastAck time.Time
	maxGap  time.Duration // longest time between two acknowledgements
}

// waitAcks waits until n more commits than now are acknowledged.
func (w *ackWriter) waitAcks(t testing.TB, n int64) {
	t.Helper()
	from := w.acked.Load()
	waitFor(t, time.Minute, fmt.Sprintf("%d more acknowledged commits", n), func() (bool, error) {
		return w.acked.Load() >= from+n, nil
	})
}

// switchoverAcks is how many commits TestSwitchoverAndBack waits for on
// each primary before switching over.
const switchoverAcks = 50

// takeMaxGap returns the longest time without an acknowledged commit since
// the last call (the write unavailability of a failover in between).
func (w *ackWriter) takeMaxGap() time.Duration {
	w.gapMu.Lock()
	defer w.gapMu.Unlock()
	g := w.maxGap
	w.maxGap = 0
	return g
}

func startAckWriter(primary func() *pgcluster.Cluster) *ackWriter {
	w := &ackWriter{primary: primary, stop: make(chan struct{}), done: make(chan struct{})}
	go w.run()
	return w
}

func (w *ackWriter) run() {
	defer close(w.done)
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	next := int64(1)
	for {
		select {
		case <-w.stop:
			return
		default:
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		if conn == nil {
			c, err := w.primary().Connect(ctx)
			if err != nil {
				cancel()
				time.Sleep(100 * time.Millisecond)
				continue
			}
			conn = c
		}
		_, err := conn.Exec(ctx, "INSERT INTO acked VALUES ($1)", next)
		cancel()
		var pgErr *pgconn.PgError
		if err == nil || (errors.As(err, &pgErr) && pgErr.Code == "23505") {
			// Committed (a retry may find it committed by the attempt
			// whose acknowledgement was lost).
			w.acked.Store(next)
			next++
			now := time.Now()
			w.gapMu.Lock()
			if !w.lastAck.IsZero() && now.Sub(w.lastAck) > w.maxGap {
				w.maxGap = now.Sub(w.lastAck)
			}
			w.lastAck = now
			w.gapMu.Unlock()
			continue
		}
		conn.Close(context.Background())
		conn = nil
		time.Sleep(50 * time.Millisecond)
	}
}

func (w *ackWriter) finish() int64 {
	close(w.stop)
	<-w.done
	return w.acked.Load()
}

// assertAcked checks that every acknowledged id is on c.
func assertAcked(t testing.TB, c *pgcluster.Cluster, acked int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := c.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var n int64
	if err := conn.QueryRow(ctx, "SELECT count(*) FROM acked WHERE id <= $1", acked).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != acked {
		t.Fatalf("%s has %d of the %d acknowledged commits: %d lost", c.Name, n, acked, acked-n)
	}
	t.Logf("%s has all %d acknowledged commits", c.Name, acked)
}

// assertOnTimeline waits until every standby replays the primary's final
// position on timeline tli, then compares their tables with it.
func assertOnTimeline(t testing.TB, primary *pgcluster.Cluster, tli uint32, standbys ...*pgcluster.Cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for _, sb := range standbys {
		waitFor(t, 60*time.Second, sb.Name+" on timeline "+fmt.Sprint(tli), func() (bool, error) {
			conn, err := sb.Connect(ctx)
			if err != nil {
				return false, nil
			}
			defer conn.Close(ctx)
			var got int
			err = conn.QueryRow(ctx, "SELECT COALESCE((SELECT received_tli FROM pg_stat_wal_receiver), 0)").Scan(&got)
			return err == nil && uint32(got) == tli, nil
		})
	}
	assertConverged(t, primary, standbys...)
}

func standbysExcept(mt *managedTree, except ...string) []*pgcluster.Cluster {
	var out []*pgcluster.Cluster
	for name, c := range mt.nodes {
		skip := false
		for _, e := range except {
			skip = skip || e == name
		}
		if !skip {
			out = append(out, c)
		}
	}
	return out
}

// Issue proof 1 and 3: with a relay in synchronous_standby_names, SIGKILL
// of the primary under pgbench promotes a candidate; every standby reaches
// its timeline and position with equal tables, and every commit pgbench or
// the id writer saw acknowledged is there. The old primary, restarted, is
// followed by nobody and shown fenced.
func TestFailoverOnPrimaryLoss(t *testing.T) {
	t.Parallel() // waits on timers more than it uses the CPU: runs beside the other manager tests
	requirePG(t)
	ctx := context.Background()
	fenced := filepath.Join(testDir(t), "fenced.txt")
	mt := newManagedTree(t, map[string]string{"synchronous_standby_names": "ANY 1 (r1, r2)"},
		[]string{"--fence-command", `echo "fence $1" >> ` + fenced},
		[]string{"r1", "r2"}, []standbySpec{
			{name: "c1", promotable: true}, {name: "c2", promotable: true},
			{name: "s1"}, {name: "s2"}, {name: "s3"}, {name: "s4"},
		})
	w := startAckWriter(func() *pgcluster.Cluster { return mt.primary })
	load := make(chan error, 1)
	go func() { load <- mt.primary.Pgbench(ctx, 2, 30*time.Second) }()
	time.Sleep(3 * time.Second)
	if err := mt.primary.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-load // pgbench fails with the primary: expected
	acked := w.finish()
	newName, tli := mt.waitNewPrimary(t, "pg", 30*time.Second)
	t.Logf("%s promoted on timeline %d %.1fs after the primary was killed; %d commits acknowledged before", newName, tli, time.Since(killed).Seconds(), acked)
	if tli != 2 {
		t.Fatalf("new timeline %d, want 2", tli)
	}
	np := mt.nodes[newName]
	assertAcked(t, np, acked)
	assertOnTimeline(t, np, tli, standbysExcept(mt, "pg", newName)...)

	// The old primary comes back on its own timeline: it stays fenced and
	// no relay streams from it.
	startCluster(t, mt.primary)
	time.Sleep(5 * time.Second)
	tr, err := treeJSON(mt.mgr.url)
	if err != nil {
		t.Fatal(err)
	}
	if st := tr.Tree.Nodes["pg"].State; st != "fenced" {
		t.Errorf("old primary is %s in the tree, want fenced", st)
	}
	for id, r := range mt.relays {
		up, _ := r.Status(t)["upstream"].(map[string]any)
		if target, _ := up["target"].(string); strings.Contains(target, fmt.Sprintf("port=%d", mt.primary.Port)) {
			t.Errorf("relay %s streams from the fenced old primary: %v", id, up)
		}
	}
	rows, err := mt.primary.QueryLSN(ctx, "SELECT COALESCE(max(flush_lsn), '0/0') FROM pg_stat_replication")
	if err != nil {
		t.Fatal(err)
	}
	if rows != 0 {
		t.Errorf("something streams from the fenced old primary (flush %s)", pgcluster.FormatLSN(rows))
	}
	if b, err := os.ReadFile(fenced); err != nil || strings.TrimSpace(string(b)) != "fence pg" {
		t.Errorf("the fence hook was not run once with the old primary's name: %q, %v", b, err)
	}
	out := cliT(t, "tree", "--manager", mt.mgr.url)
	t.Logf("tree after failover:\n%s", out)
	if !strings.Contains(out, "fenced") {
		t.Errorf("tree does not show the old primary fenced")
	}
}

// Issue proof 2: the candidates' relay stalls (SIGSTOP) before the primary
// dies, so they lag behind the relay tier; the manager catches the chosen
// one up from the relay that holds the most WAL before promoting it, and
// nothing acknowledged is lost.
func TestFailoverCatchesCandidateUpFromRelays(t *testing.T) {
	t.Parallel() // waits on timers more than it uses the CPU: runs beside the other manager tests
	requirePG(t)
	// A long --failure-timeout keeps the stalled relay "alive" in the tree
	// through the failover: otherwise relay-failure placement may move the
	// candidates first, and this path would go untested.
	mt := newManagedTree(t, map[string]string{"synchronous_standby_names": "r1"}, []string{"--failure-timeout", "30s"},
		[]string{"r1", "r2"}, []standbySpec{
			{name: "c1", promotable: true, parent: "r2"}, {name: "c2", promotable: true, parent: "r2"},
			{name: "s1", parent: "r1"},
		})
	w := startAckWriter(func() *pgcluster.Cluster { return mt.primary })
	time.Sleep(time.Second)
	r2 := mt.relays["r2"]
	r2.cmd.Process.Signal(syscall.SIGSTOP)
	var contOnce sync.Once
	cont := func() { contOnce.Do(func() { r2.cmd.Process.Signal(syscall.SIGCONT) }) }
	t.Cleanup(cont)
	time.Sleep(2 * time.Second) // commits the candidates do not receive
	behind, _ := mt.primary.CurrentLSN(context.Background())
	if err := mt.primary.Kill(); err != nil {
		t.Fatal(err)
	}
	acked := w.finish()
	newName, tli := mt.waitNewPrimary(t, "pg", 40*time.Second)
	t.Logf("%s promoted on timeline %d; the primary was at %s when killed; %d commits acknowledged", newName, tli, pgcluster.FormatLSN(behind), acked)
	if newName != "c1" && newName != "c2" {
		t.Fatalf("promoted %s, not a candidate", newName)
	}
	assertAcked(t, mt.nodes[newName], acked)
	log, _ := os.ReadFile(mt.mgr.logPath)
	for _, line := range strings.Split(string(log), "\n") {
		if strings.Contains(line, "failover candidate") || strings.Contains(line, "caught up") {
			t.Logf("manager: %s", line)
		}
	}
	if !strings.Contains(string(log), "catching the candidate up from the relay tier") || !strings.Contains(string(log), "candidate caught up") {
		t.Errorf("the candidate was not caught up from the relays before promotion; manager log:\n%s", tail(mt.mgr.logPath, 30))
	}
	cont()
	assertOnTimeline(t, mt.nodes[newName], tli, standbysExcept(mt, "pg", newName)...)
}

// Issue proof 4: --promotion external: the manager does not promote by
// itself; a standby promoted by hand becomes the committed primary and the
// tree converges on its timeline.
func TestExternalPromotionIsFollowed(t *testing.T) {
	t.Parallel() // waits on timers more than it uses the CPU: runs beside the other manager tests
	requirePG(t)
	ctx := context.Background()
	mt := newManagedTree(t, nil, []string{"--promotion", "external"},
		[]string{"r1", "r2"}, []standbySpec{{name: "c1", promotable: true}, {name: "s1"}, {name: "s2"}})
	if err := mt.primary.Pgbench(ctx, 2, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	final, _ := mt.primary.CurrentLSN(ctx)
	if err := mt.nodes["c1"].WaitReplayed(ctx, final); err != nil {
		t.Fatal(err)
	}
	if err := mt.primary.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(6 * time.Second) // twice --primary-failure-timeout
	if name, _ := mt.currentPrimary(t); name != "pg" {
		t.Fatalf("the manager changed the primary to %s with --promotion external", name)
	}
	if err := mt.nodes["c1"].Exec(ctx, "SELECT pg_promote()"); err != nil {
		t.Fatal(err)
	}
	newName, tli := mt.waitNewPrimary(t, "pg", 20*time.Second)
	if newName != "c1" || tli != 2 {
		t.Fatalf("committed %s on timeline %d, want c1 on 2", newName, tli)
	}
	if err := mt.nodes["c1"].Pgbench(ctx, 2, 2*time.Second); err != nil {
		t.Fatal(err)
	}
	assertOnTimeline(t, mt.nodes["c1"], tli, mt.nodes["s1"], mt.nodes["s2"])
}

// Issue proof 5: switchover and back, twice, under writes: no acknowledged
// commit is lost, and each old primary rejoins as a standby below a relay
// (pg_rewind when it diverged) and is the target of the next switchover.
func TestSwitchoverAndBack(t *testing.T) {
	t.Parallel() // waits on timers more than it uses the CPU: runs beside the other manager tests
	requirePG(t)
	mt := newManagedTree(t, nil, nil, []string{"r1", "r2"}, []standbySpec{{name: "c1", promotable: true}, {name: "s1"}})
	var cur atomic.Pointer[pgcluster.Cluster]
	cur.Store(mt.primary)
	w := startAckWriter(func() *pgcluster.Cluster { return cur.Load() })
	from, to := "pg", "c1"
	for i := 0; i < 4; i++ {
		// Each switchover happens under writes: some commits on the
		// primary of the moment first.
		w.waitAcks(t, switchoverAcks)
		started := time.Now()
		out := cliT(t, "switchover", "--to", to, "--manager", mt.mgr.url)
		t.Logf("switchover %d to %s in %.1fs: %s", i+1, to, time.Since(started).Seconds(), strings.TrimSpace(out))
		cur.Store(mt.nodes[to])
		// The old primary rejoins as a standby of the new one, below a
		// relay, with walrelay rejoin as an operator would run it.
		old := mt.nodes[from]
		out = cliT(t, "rejoin", from, "--pgdata", old.DataDir, "--conninfo", old.ConnString(), "--log-file", old.LogFile, "--manager", mt.mgr.url)
		t.Logf("rejoin %s: %s", from, strings.TrimSpace(out))
		_, tli := mt.currentPrimary(t)
		assertOnTimeline(t, mt.nodes[to], tli, standbysExcept(mt, to)...)
		from, to = to, from
	}
	acked := w.finish()
	name, _ := mt.currentPrimary(t)
	assertAcked(t, mt.nodes[name], acked)
	if acked == 0 {
		t.Fatal("the writer never committed")
	}
}
