// Package pgcluster creates, runs and stops throwaway PostgreSQL clusters on
// 127.0.0.1 for the e2e tests and the demo. Everything lives under a base
// directory the caller owns; when running as root, the PostgreSQL binaries
// run as the "postgres" user, which owns the cluster directories.
package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNotInstalled means no PostgreSQL server binaries were found.
var ErrNotInstalled = errors.New("PostgreSQL server binaries not found")

// FindBinDir locates initdb, postgres and friends: $WALRELAY_PG_BIN, the
// newest /usr/lib/postgresql/*/bin, or the directory of postgres on PATH.
func FindBinDir() (string, error) {
	if d := os.Getenv("WALRELAY_PG_BIN"); d != "" {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err != nil {
			return "", fmt.Errorf("WALRELAY_PG_BIN=%s: %w: %w", d, ErrNotInstalled, err)
		}
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return majorOf(dirs[i]) > majorOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "postgres")); err == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		return filepath.Dir(p), nil
	}
	return "", fmt.Errorf("%w: install PostgreSQL 15 or newer (Debian/Ubuntu: apt-get install -y postgresql) or set WALRELAY_PG_BIN", ErrNotInstalled)
}

func majorOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Cluster is one PostgreSQL data directory and the server running on it.
type Cluster struct {
	Name    string
	BinDir  string
	DataDir string
	Port    int
	LogFile string

	log     *slog.Logger
	mu      sync.Mutex
	started bool
}

// Options configures a new cluster.
type Options struct {
	BinDir  string // "" = FindBinDir()
	BaseDir string // parent directory; the cluster goes in BaseDir/Name
	Name    string
	Conf    map[string]string // extra postgresql.conf settings
	Logger  *slog.Logger
}

func (o *Options) fill() error {
	if o.Name == "" || o.BaseDir == "" {
		return errors.New("pgcluster: Name and BaseDir are required")
	}
	if o.BinDir == "" {
		d, err := FindBinDir()
		if err != nil {
			return err
		}
		o.BinDir = d
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return prepareBase(o.BaseDir)
}

// defaultConf is what every cluster gets: loopback TCP only, replication on,
// fast and small.
func defaultConf(port int) map[string]string {
	return map[string]string{
		"listen_addresses":             "127.0.0.1",
		"port":                         strconv.Itoa(port),
		"unix_socket_directories":      "",
		"wal_level":                    "replica",
		"max_wal_senders":              "30",
		"max_replication_slots":        "30",
		"hot_standby":                  "on",
		"hot_standby_feedback":         "off",
		"wal_keep_size":                "0",
		"fsync":                        "off",
		"synchronous_commit":           "on",
		"full_page_writes":             "on",
		"logging_collector":            "off",
		"log_line_prefix":              "%m [%p] %q%a ",
		"wal_receiver_status_interval": "1s",
		"wal_receiver_timeout":         "60s",
		"wal_retrieve_retry_interval":  "1s",
		"shared_buffers":               "64MB",
		"max_connections":              "60",
	}
}

// InitPrimary runs initdb and writes the configuration. It does not start
// the server.
func InitPrimary(ctx context.Context, opts Options) (*Cluster, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	c, err := newCluster(opts)
	if err != nil {
		return nil, err
	}
	if err := c.run(ctx, "initdb", "-D", c.DataDir, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8", "--locale=C"); err != nil {
		return nil, err
	}
	hba := "local all all trust\n" +
		"host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n" +
		"host replication all 127.0.0.1/32 trust\nhost replication all ::1/128 trust\n"
	if err := c.writeOwned(filepath.Join(c.DataDir, "pg_hba.conf"), hba, false); err != nil {
		return nil, err
	}
	conf := defaultConf(c.Port)
	for k, v := range opts.Conf {
		conf[k] = v
	}
	if err := c.SetConf(conf); err != nil {
		return nil, err
	}
	return c, nil
}

func newCluster(opts Options) (*Cluster, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(opts.BaseDir, opts.Name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := chownPostgres(dir); err != nil {
		return nil, err
	}
	return &Cluster{
		Name:    opts.Name,
		BinDir:  opts.BinDir,
		DataDir: filepath.Join(dir, "data"),
		Port:    port,
		LogFile: filepath.Join(dir, "server.log"),
		log:     opts.Logger.With("cluster", opts.Name),
	}, nil
}

// BaseBackup makes a standby of src with pg_basebackup -X stream, streaming
// from primaryConninfo once started. It does not start the server.
func BaseBackup(ctx context.Context, src *Cluster, primaryConninfo string, opts Options) (*Cluster, error) {
	if err := opts.fill(); err != nil {
		return nil, err
	}
	c, err := newCluster(opts)
	if err != nil {
		return nil, err
	}
	if err := c.run(ctx, "pg_basebackup", "-h", "127.0.0.1", "-p", strconv.Itoa(src.Port), "-U", "postgres",
		"-D", c.DataDir, "-X", "stream", "-c", "fast", "--no-sync"); err != nil {
		return nil, err
	}
	if err := c.writeOwned(filepath.Join(c.DataDir, "standby.signal"), "", false); err != nil {
		return nil, err
	}
	conf := map[string]string{
		"port":             strconv.Itoa(c.Port),
		"primary_conninfo": primaryConninfo,
		"cluster_name":     opts.Name,
	}
	for k, v := range opts.Conf {
		conf[k] = v
	}
	if err := c.SetConf(conf); err != nil {
		return nil, err
	}
	return c, nil
}

// BaseBackupFrom runs `pg_basebackup -R -X stream` against any server
// (a relay, say), so that primary_conninfo is what pg_basebackup writes: the
// server it was taken from. Only the port is changed afterwards. It does not
// start the server.
func BaseBackupFrom(ctx context.Context, binDir, host string, port int, opts Options) (*Cluster, error) {
	if opts.BinDir == "" {
		opts.BinDir = binDir
	}
	if err := opts.fill(); err != nil {
		return nil, err
	}
	c, err := newCluster(opts)
	if err != nil {
		return nil, err
	}
	if err := c.run(ctx, "pg_basebackup", "-h", host, "-p", strconv.Itoa(port), "-U", "postgres",
		"-D", c.DataDir, "-X", "stream", "-c", "fast", "-R", "--no-sync"); err != nil {
		return nil, err
	}
	if err := c.SetConf(map[string]string{"port": strconv.Itoa(c.Port), "cluster_name": opts.Name}); err != nil {
		return nil, err
	}
	return c, nil
}

// SetConf appends settings to postgresql.auto.conf; later lines win.
func (c *Cluster) SetConf(settings map[string]string) error {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = '%s'\n", k, strings.ReplaceAll(settings[k], "'", "''"))
	}
	return c.writeOwned(filepath.Join(c.DataDir, "postgresql.auto.conf"), b.String(), true)
}

func (c *Cluster) writeOwned(path, content string, appendTo bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if appendTo {
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	if _, err := f.WriteString(content); err != nil {
		f.Close()
		return fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	if err := f.Close(); err != nil {
		return err
	}
	return chownPostgres(path)
}

// Start starts the server and waits until it accepts connections.
func (c *Cluster) Start(ctx context.Context) error {
	if err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-l", c.LogFile, "-w", "-t", "60", "start"); err != nil {
		return fmt.Errorf("%w\nlog tail:\n%s", err, c.LogTail(30))
	}
	c.mu.Lock()
	c.started = true
	c.mu.Unlock()
	return nil
}

// Stop shuts the server down (fast mode). Safe to call more than once.
func (c *Cluster) Stop(ctx context.Context) error {
	return c.stop(ctx, "fast")
}

// Kill stops the server in immediate mode, as a crash would.
func (c *Cluster) Kill() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return c.stop(ctx, "immediate")
}

func (c *Cluster) stop(ctx context.Context, mode string) error {
	c.mu.Lock()
	started := c.started
	c.started = false
	c.mu.Unlock()
	if !started {
		return nil
	}
	if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); err != nil {
		return nil
	}
	return c.run(ctx, "pg_ctl", "-D", c.DataDir, "-m", mode, "-w", "-t", "60", "stop")
}

// LogTail returns the last n lines of the server log.
func (c *Cluster) LogTail(n int) string {
	b, _ := os.ReadFile(c.LogFile)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ConnString is a libpq connection string for SQL.
func (c *Cluster) ConnString() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", c.Port)
}

// ReplicationConnString is a libpq connection string for primary_conninfo
// or a relay's --upstream.
func (c *Cluster) ReplicationConnString() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable", c.Port)
}

// run executes a PostgreSQL binary (as postgres when root) and includes its
// output in the error.
func (c *Cluster) run(ctx context.Context, prog string, args ...string) error {
	cmd := Command(ctx, c.BinDir, prog, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	c.log.Debug("run", "prog", prog, "args", strings.Join(args, " "))
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("cluster %s: %s %s: %w: %s", c.Name, prog, strings.Join(args, " "), err, strings.TrimSpace(out.String()))
	}
	return nil
}

// Command builds an exec.Cmd for a PostgreSQL binary that runs as the
// postgres user when this process is root.
func Command(ctx context.Context, binDir, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, prog), args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "PGAPPNAME="+prog)
	if cred := postgresCredential(); cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Env = append(cmd.Env, "HOME=/tmp")
	}
	cmd.Dir = "/"
	return cmd
}

var (
	credOnce sync.Once
	credVal  *syscall.Credential
	credUID  = -1
	credGID  = -1
)

func postgresCredential() *syscall.Credential {
	credOnce.Do(func() {
		if os.Geteuid() != 0 {
			return
		}
		u, err := user.Lookup("postgres")
		if err != nil {
			return
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		credUID, credGID = uid, gid
		credVal = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	})
	return credVal
}

func chownPostgres(path string) error {
	if postgresCredential() == nil {
		return nil
	}
	return os.Chown(path, credUID, credGID)
}

// prepareBase makes base and its parents traversable, so the postgres user
// can reach cluster directories under a root-owned 0700 t.TempDir().
func prepareBase(base string) error {
	if err := os.MkdirAll(base, 0o755); err != nil {
		return err
	}
	if postgresCredential() == nil {
		return nil
	}
	for d := base; d != "/" && d != "."; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
				return err
			}
		}
	}
	return nil
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// Connect opens a SQL connection.
func (c *Cluster) Connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, c.ConnString())
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	return conn, nil
}

// Promote ends recovery on a standby (pg_ctl promote) and waits until it
// accepts writes.
func (c *Cluster) Promote(ctx context.Context) error {
	return c.run(ctx, "pg_ctl", "-D", c.DataDir, "-w", "-t", "60", "promote")
}
