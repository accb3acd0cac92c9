package topology

// Crash tests for the files a manager writes and reads back. NewManager keeps
// in DataDir:
//
//   - raft.db: raft-boltdb's BoltStore, the Raft log and stable store (term,
//     vote). It is a bbolt database and bbolt syncs its own commits: with
//     NoSync false (the default, and NewManager does not set it) every
//     transaction fdatasyncs its data pages and then its meta page before
//     Commit returns, so a crash leaves the last committed transaction
//     (bbolt tx.go write/writeMeta). TestManagerRaftFiles checks NoSync.
//   - snapshots/: raft.FileSnapshotStore retaining 2 snapshots. A snapshot
//     is written into snapshots/<term>-<index>-<msec>.tmp/ (meta.json, then
//     state.bin through a CRC-64 hash), state.bin and meta.json (now with
//     size and CRC) are fsynced, the directory is renamed without .tmp and
//     snapshots/ is fsynced; then snapshots beyond 2 are removed. On open the
//     store ignores *.tmp directories and directories without a readable
//     meta.json, and Open checks state.bin against the CRC.
//
// The tests use the real store, the real bolt store and this package's FSM.

import (
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
)

// crashStages build a tree in three steps; a snapshot is taken after the
// first two, so every stage ends in a different state.
var crashStages = [][]Command{
	{
		{Op: OpSetPrimary, Name: "pg1", Conninfo: "host=pg1", Timeline: 1},
		{Op: OpRegisterRelay, Name: "r1", Conninfo: "host=r1", Zone: "a"},
		{Op: OpRegisterRelay, Name: "r2", Conninfo: "host=r2", Zone: "b"},
		{Op: OpAddStandby, Name: "s1", Conninfo: "host=s1", Zone: "a", Promotable: true, Tier: TierHigh},
		{Op: OpAssign, Assignments: map[string]string{"r1": "pg1", "r2": "pg1", "s1": "r1"}},
		{Op: OpManager, Name: "m0", Conninfo: "http://m0"},
	},
	{
		{Op: OpAddStandby, Name: "s2", Conninfo: "host=s2", Zone: "b", Tier: TierBatch},
		{Op: OpAssign, Name: "s2", Parent: "r2", Pinned: true},
		{Op: OpSetState, Name: "r1", State: StateFailed},
		{Op: OpAssign, Name: "s1", Parent: "r2"},
	},
	{
		{Op: OpSetPrimary, Name: "s1", Conninfo: "host=s1", Timeline: 2},
		{Op: OpRemove, Name: "r1"},
		{Op: OpAssign, Name: "r2", Parent: "s1"},
	},
}

// A crash while a snapshot is being written leaves a .tmp directory: the
// store lists only the previous snapshot, and restoring it gives the tree as
// it was when that snapshot was taken. The .tmp directory stays on disk
// (the store never removes it; it is a few kilobytes).
func TestSnapshotCrashBeforeRenameKeepsPrevious(t *testing.T) {
	for _, tc := range []struct {
		name string
		// crash writes the second snapshot into the store at base and
		// returns a directory holding what is on disk after the crash.
		crash func(t *testing.T, base string, snaps *raft.FileSnapshotStore, snap raft.FSMSnapshot) string
	}{
		{"state written, sink never closed", func(t *testing.T, base string, snaps *raft.FileSnapshotStore, snap raft.FSMSnapshot) string {
			sink := createSink(t, snaps, 20)
			// Persist ends with sink.Close, which would finish the snapshot;
			// the process dies there instead. What it wrote is on disk; what
			// sat in the sink's buffer is lost.
			if err := snap.Persist(noCloseSink{sink}); err != nil {
				t.Fatal(err)
			}
			image := t.TempDir()
			if err := os.CopyFS(image, os.DirFS(base)); err != nil {
				t.Fatal(err)
			}
			sink.Cancel()
			return image
		}},
		{"state and meta synced, rename not done", func(t *testing.T, base string, snaps *raft.FileSnapshotStore, snap raft.FSMSnapshot) string {
			sink := createSink(t, snaps, 20)
			if err := snap.Persist(sink); err != nil {
				t.Fatal(err)
			}
			// Undo Close's rename: the directory is then exactly as it was
			// just before it (Close removes old snapshots only after the
			// rename, and there are only two).
			dir := filepath.Join(base, "snapshots", sink.ID())
			if err := os.Rename(dir, dir+".tmp"); err != nil {
				t.Fatal(err)
			}
			return base
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			snaps := newSnapshotStore(t, base)
			fsm := NewFSM()
			applyAll(t, fsm, crashStages[0]...)
			want := fsm.Tree()
			first := persist(t, snaps, fsm, 10)
			applyAll(t, fsm, crashStages[1]...)
			snap, err := fsm.Snapshot()
			if err != nil {
				t.Fatal(err)
			}

			image := tc.crash(t, base, snaps, snap)

			tmp, _ := filepath.Glob(filepath.Join(image, "snapshots", "*.tmp", "state.bin"))
			if len(tmp) != 1 {
				t.Fatalf("crash image holds %d unfinished snapshots, want 1", len(tmp))
			}
			reopened := newSnapshotStore(t, image)
			list, err := reopened.List()
			if err != nil {
				t.Fatal(err)
			}
			if len(list) != 1 || list[0].ID != first {
				t.Fatalf("after the crash the store lists %v, want only %s", snapshotIDs(list), first)
			}
			if got := restoreSnapshot(t, reopened, first); !reflect.DeepEqual(got, want) {
				t.Fatalf("restored %s, want %s", treeJSON(got), treeJSON(want))
			}
		})
	}
}

// Damage to a finished snapshot is found when it is opened: a torn or
// changed state.bin fails the CRC, a torn meta.json hides the snapshot from
// List. The older snapshot still opens and restores. What raft (and so the
// manager) does with a damaged newest snapshot is in
// TestRaftStartWithDamagedSnapshots.
func TestSnapshotStoreDetectsDamage(t *testing.T) {
	for _, tc := range []struct {
		name   string
		file   string
		damage func(b []byte) []byte
		listed bool   // the damaged snapshot is still in List
		err    string // from Open
	}{
		{"state.bin truncated", "state.bin", func(b []byte) []byte { return b[:len(b)/2] }, true, "CRC mismatch"},
		{"state.bin empty", "state.bin", func(b []byte) []byte { return nil }, true, "CRC mismatch"},
		{"state.bin byte flipped", "state.bin", func(b []byte) []byte { b[len(b)/2] ^= 0x20; return b }, true, "CRC mismatch"},
		{"state.bin with a stray tail", "state.bin", func(b []byte) []byte { return append(b, '\n') }, true, "CRC mismatch"},
		{"meta.json truncated", "meta.json", func(b []byte) []byte { return b[:len(b)/2] }, false, "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := t.TempDir()
			snaps := newSnapshotStore(t, base)
			fsm := NewFSM()
			applyAll(t, fsm, crashStages[0]...)
			want := fsm.Tree()
			older := persist(t, snaps, fsm, 10)
			applyAll(t, fsm, crashStages[1]...)
			newer := persist(t, snaps, fsm, 20)

			path := filepath.Join(base, "snapshots", newer, tc.file)
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, tc.damage(b), 0o644); err != nil {
				t.Fatal(err)
			}

			reopened := newSnapshotStore(t, base)
			list, err := reopened.List()
			if err != nil {
				t.Fatal(err)
			}
			wantIDs := []string{older}
			if tc.listed {
				wantIDs = []string{newer, older}
			}
			if got := snapshotIDs(list); !reflect.DeepEqual(got, wantIDs) {
				t.Errorf("listed %v, want %v", got, wantIDs)
			}
			if _, rc, err := reopened.Open(newer); err == nil || !strings.Contains(err.Error(), tc.err) {
				if rc != nil {
					rc.Close()
				}
				t.Errorf("opening the damaged snapshot: %v, want %q", err, tc.err)
			}
			if got := restoreSnapshot(t, reopened, older); !reflect.DeepEqual(got, want) {
				t.Errorf("older snapshot restored %s, want %s", treeJSON(got), treeJSON(want))
			}
		})
	}
}

// A single-node Raft on the manager's stores (bolt raft.db, file snapshots
// retaining 2) takes a snapshot after stages 0 and 1, applies stage 2 and
// stops; then its snapshots are damaged and it starts again. Raft's
// restoreSnapshot tries the listed snapshots newest first and skips one that
// fails to open or restore, then replays the log after the one it restored.
// That works only while the log still holds those entries: with the
// manager's settings (raft defaults: a snapshot once 8192 entries are
// outstanding, 10240 entries kept behind the newest) the log reaches back
// past the older snapshot unless more than 10240 entries came between the
// two. When it does not, NewRaft panics (the manager process dies at start);
// when no snapshot opens, NewRaft and so NewManager return an error. Either
// way the member has to be emptied and rejoined to take a snapshot from the
// leader.
func TestRaftStartWithDamagedSnapshots(t *testing.T) {
	for _, tc := range []struct {
		name         string
		trailingLogs uint64 // 0: the manager's
		tear         int    // newest snapshots to damage
		restored     int    // stage whose snapshot is restored; -1: none
		panics       bool
		err          string
	}{
		{name: "intact", restored: 1},
		{name: "newest torn", tear: 1, restored: 0},
		{name: "newest torn, log compacted past the older", trailingLogs: 1, tear: 1, restored: 0, panics: true},
		{name: "both torn", tear: 2, restored: -1, err: "failed to load any existing snapshots"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			var trees []*Tree
			var snapIndex []uint64
			func() {
				fsm := NewFSM()
				n, err := openRaftNode(t, dir, fsm, tc.trailingLogs)
				if err != nil {
					t.Fatal(err)
				}
				defer n.close()
				boot := raft.Configuration{Servers: []raft.Server{{ID: "m0", Address: n.addr}}}
				if err := n.raft.BootstrapCluster(boot).Error(); err != nil {
					t.Fatal(err)
				}
				waitLeader(t, n.raft)
				for i, stage := range crashStages {
					for _, c := range stage {
						f := n.raft.Apply(c.Encode(), 2*time.Second)
						if err := f.Error(); err != nil {
							t.Fatal(err)
						}
						if r := f.Response().(ApplyResult); r.Err != nil {
							t.Fatalf("%+v: %v", c, r.Err)
						}
					}
					trees = append(trees, fsm.Tree())
					if i < 2 {
						f := n.raft.Snapshot()
						if err := f.Error(); err != nil {
							t.Fatal(err)
						}
						meta, rc, err := f.Open()
						if err != nil {
							t.Fatal(err)
						}
						rc.Close()
						snapIndex = append(snapIndex, meta.Index)
					}
				}
			}()

			snaps := newSnapshotStore(t, dir)
			list, err := snaps.List()
			if err != nil || len(list) != 2 {
				t.Fatalf("snapshots %v, %v; want 2", snapshotIDs(list), err)
			}
			for _, m := range list[:tc.tear] {
				path := filepath.Join(dir, "snapshots", m.ID, "state.bin")
				b, err := os.ReadFile(path)
				if err != nil {
					t.Fatal(err)
				}
				b[len(b)/2] ^= 0x20
				if err := os.WriteFile(path, b, 0o644); err != nil {
					t.Fatal(err)
				}
				if _, _, err := snaps.Open(m.ID); err == nil || err.Error() != "CRC mismatch" {
					t.Fatalf("torn snapshot %s opened: %v", m.ID, err)
				}
			}

			fsm := &restoreRecorder{FSM: NewFSM()}
			n, panicked, err := startRaftNode(t, dir, fsm, tc.trailingLogs)
			if n != nil {
				defer n.close()
			}
			if tc.panics {
				if perr, ok := panicked.(error); !ok || !errors.Is(perr, raft.ErrLogNotFound) {
					t.Fatalf("start: panic %v, error %v; want a panic with %v", panicked, err, raft.ErrLogNotFound)
				}
				return
			}
			if panicked != nil {
				t.Fatalf("start panicked: %v", panicked)
			}
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("start: %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := fsm.trees()
			if len(got) != 1 {
				t.Fatalf("restored %d snapshots, want 1", len(got))
			}
			if !reflect.DeepEqual(got[0], trees[tc.restored]) {
				t.Fatalf("restored %s, want stage %d's tree %s", treeJSON(got[0]), tc.restored, treeJSON(trees[tc.restored]))
			}
			if got, want := n.raft.Stats()["last_snapshot_index"], strconv.FormatUint(snapIndex[tc.restored], 10); got != want {
				t.Errorf("last snapshot index %s, want %s", got, want)
			}
			// Once leader, the log after the restored snapshot is applied.
			waitLeader(t, n.raft)
			if err := n.raft.Barrier(2 * time.Second).Error(); err != nil {
				t.Fatal(err)
			}
			if got := fsm.Tree(); !reflect.DeepEqual(got, trees[2]) {
				t.Fatalf("after replay %s, want %s", treeJSON(got), treeJSON(trees[2]))
			}
		})
	}
}

// The manager keeps raft.db and snapshots/ in its data directory, and its
// bolt store syncs every commit.
func TestManagerRaftFiles(t *testing.T) {
	dir := t.TempDir()
	m, err := NewManager(ManagerConfig{NodeID: "m1", RaftAddr: freeAddr(t), HTTPAddr: freeAddr(t), DataDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { m.ln.Close(); m.close() }()
	if fi, err := os.Stat(filepath.Join(dir, "raft.db")); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("raft.db: %v", err)
	}
	if fi, err := os.Stat(filepath.Join(dir, "snapshots")); err != nil || !fi.IsDir() {
		t.Errorf("snapshots: %v", err)
	}
	// BoltStore does not export its *bbolt.DB; read DB.NoSync through
	// reflection (reading an unexported field's bool is allowed).
	conn := reflect.ValueOf(m.store).Elem().FieldByName("conn")
	if !conn.IsValid() || conn.Kind() != reflect.Pointer || conn.Elem().FieldByName("NoSync").Kind() != reflect.Bool {
		t.Fatal("raft-boltdb's BoltStore no longer has conn *bbolt.DB; check by hand that NoSync stays false")
	}
	if conn.Elem().FieldByName("NoSync").Bool() {
		t.Error("the manager's bolt store skips fsync (NoSync)")
	}
}

// raftNode is one manager's Raft built as NewManager builds it, on the
// in-memory transport and with test timeouts.
type raftNode struct {
	raft  *raft.Raft
	store *raftboltdb.BoltStore
	addr  raft.ServerAddress
	trans *raft.InmemTransport
}

func openRaftNode(t *testing.T, dir string, fsm raft.FSM, trailingLogs uint64) (*raftNode, error) {
	n, panicked, err := startRaftNode(t, dir, fsm, trailingLogs)
	if panicked != nil {
		t.Fatalf("start raft: %v", panicked)
	}
	return n, err
}

// startRaftNode returns a panic from raft.NewRaft rather than dying of it.
func startRaftNode(t *testing.T, dir string, fsm raft.FSM, trailingLogs uint64) (n *raftNode, panicked any, err error) {
	t.Helper()
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(dir, "raft.db")})
	if err != nil {
		return nil, nil, err
	}
	snaps := newSnapshotStore(t, dir)
	addr, trans := raft.NewInmemTransport("m0")
	rc := raft.DefaultConfig()
	rc.LocalID = "m0"
	rc.HeartbeatTimeout = 50 * time.Millisecond
	rc.ElectionTimeout = 50 * time.Millisecond
	rc.LeaderLeaseTimeout = 50 * time.Millisecond
	rc.CommitTimeout = 5 * time.Millisecond
	rc.Logger = hclog.New(&hclog.LoggerOptions{Output: io.Discard})
	if trailingLogs != 0 {
		rc.TrailingLogs = trailingLogs
	}
	defer func() {
		if panicked = recover(); panicked != nil || err != nil {
			trans.Close()
			store.Close()
			n = nil
		}
	}()
	r, err := raft.NewRaft(rc, fsm, store, store, snaps, trans)
	if err != nil {
		return nil, nil, err
	}
	return &raftNode{raft: r, store: store, addr: addr, trans: trans}, nil, nil
}

func (n *raftNode) close() {
	n.raft.Shutdown().Error()
	n.trans.Close()
	n.store.Close()
}

func waitLeader(t *testing.T, r *raft.Raft) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for r.State() != raft.Leader {
		if time.Now().After(deadline) {
			t.Fatal("no leader elected")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// restoreRecorder is the FSM, noting the tree after each Restore.
type restoreRecorder struct {
	*FSM
	mu       sync.Mutex
	restored []*Tree
}

func (r *restoreRecorder) Restore(rc io.ReadCloser) error {
	if err := r.FSM.Restore(rc); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.restored = append(r.restored, r.FSM.Tree())
	return nil
}

func (r *restoreRecorder) trees() []*Tree {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*Tree(nil), r.restored...)
}

// noCloseSink is a sink whose Close never happens: the process died first.
type noCloseSink struct{ raft.SnapshotSink }

func (noCloseSink) Close() error { return nil }

func newSnapshotStore(t *testing.T, base string) *raft.FileSnapshotStore {
	t.Helper()
	s, err := raft.NewFileSnapshotStore(base, 2, io.Discard) // as NewManager
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func createSink(t *testing.T, snaps *raft.FileSnapshotStore, index uint64) raft.SnapshotSink {
	t.Helper()
	addr, trans := raft.NewInmemTransport("m0")
	defer trans.Close()
	conf := raft.Configuration{Servers: []raft.Server{{ID: "m0", Address: addr}}}
	sink, err := snaps.Create(raft.SnapshotVersionMax, index, 1, conf, 1, trans)
	if err != nil {
		t.Fatal(err)
	}
	return sink
}

// persist writes a complete snapshot of fsm at index and returns its ID.
func persist(t *testing.T, snaps *raft.FileSnapshotStore, fsm *FSM, index uint64) string {
	t.Helper()
	snap, err := fsm.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	sink := createSink(t, snaps, index)
	if err := snap.Persist(sink); err != nil {
		t.Fatal(err)
	}
	return sink.ID()
}

func restoreSnapshot(t *testing.T, snaps *raft.FileSnapshotStore, id string) *Tree {
	t.Helper()
	_, rc, err := snaps.Open(id)
	if err != nil {
		t.Fatalf("open snapshot %s: %v", id, err)
	}
	f := NewFSM()
	if err := f.Restore(rc); err != nil {
		t.Fatal(err)
	}
	return f.Tree()
}

func treeJSON(t *Tree) string {
	b, _ := json.Marshal(t)
	return string(b)
}

func snapshotIDs(list []*raft.SnapshotMeta) []string {
	var ids []string
	for _, m := range list {
		ids = append(ids, m.ID)
	}
	return ids
}
