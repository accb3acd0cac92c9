package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// Cluster is one PostgreSQL data directory and the server running on it.
// Its methods may be called from several goroutines.
type Cluster struct {
	Name    string
	BinDir  string
	DataDir string
	Port    int
	LogFile string // server log (pg_ctl -l)

	log *slog.Logger
}

// Options configures a new cluster.
type Options struct {
	BinDir  string            // "" = FindBinDir()
	BaseDir string            // parent directory; the cluster goes in BaseDir/Name
	Name    string            // also the standby's cluster_name
	Conf    map[string]string // extra postgresql.conf settings; override the defaults
	Logger  *slog.Logger      // nil = discard
}

func (o *Options) fill() error {
	if o.Name == "" || o.BaseDir == "" {
		return errors.New("pgcluster: Options.Name and Options.BaseDir are required")
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
	if err := prepareBase(o.BaseDir); err != nil {
		return fmt.Errorf("cluster %s: %w", o.Name, err)
	}
	return nil
}

// defaultConf is what every primary gets: loopback TCP only, replication on,
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

// hba trusts every user and database, replication included, from loopback.
const hba = `local all all trust
host all all 127.0.0.1/32 trust
host all all ::1/128 trust
host replication all 127.0.0.1/32 trust
host replication all ::1/128 trust
`

// InitPrimary runs initdb into BaseDir/Name/data and writes pg_hba.conf and
// the settings (defaults, then opts.Conf). It does not start the server.
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
		return nil, fmt.Errorf("cluster %s: %w", opts.Name, err)
	}
	dir := filepath.Join(opts.BaseDir, opts.Name)
	if err := makeOwnedDir(dir); err != nil {
		return nil, fmt.Errorf("cluster %s: %w", opts.Name, err)
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

// BaseBackup makes a standby of src with pg_basebackup -X stream. Once
// started it streams from primaryConninfo (src, a relay, anything), on a port
// of its own, with cluster_name = opts.Name and opts.Conf on top of what it
// inherited from src. It does not start the server.
func BaseBackup(ctx context.Context, src *Cluster, primaryConninfo string, opts Options) (*Cluster, error) {
	if opts.BinDir == "" {
		opts.BinDir = src.BinDir
	}
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
// server it was taken from. Only the port, cluster_name and opts.Conf are set
// afterwards. It does not start the server.
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
	conf := map[string]string{"port": strconv.Itoa(c.Port), "cluster_name": opts.Name}
	for k, v := range opts.Conf {
		conf[k] = v
	}
	if err := c.SetConf(conf); err != nil {
		return nil, err
	}
	return c, nil
}

// SetConf appends settings to postgresql.auto.conf, in name order; later
// lines win. They take effect at the next start (or reload, for those that
// allow it).
func (c *Cluster) SetConf(settings map[string]string) error {
	return c.writeOwned(filepath.Join(c.DataDir, "postgresql.auto.conf"), confLines(settings), true)
}

// confLines renders settings as postgresql.conf lines with quoted values.
func confLines(settings map[string]string) string {
	keys := make([]string, 0, len(settings))
	for k := range settings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s = %s\n", k, quoteConf(settings[k]))
	}
	return b.String()
}

// confQuoter escapes a value for a quoted postgresql.conf string, which
// takes backslash escapes and a doubled single quote for a quote.
var confQuoter = strings.NewReplacer(`\`, `\\`, `'`, `''`, "\n", `\n`, "\r", `\r`, "\t", `\t`)

// quoteConf quotes a value for postgresql.conf.
func quoteConf(v string) string { return "'" + confQuoter.Replace(v) + "'" }

func (c *Cluster) writeOwned(path, content string, appendTo bool) error {
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if appendTo {
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if err != nil {
		return fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	_, err = f.WriteString(content)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = chownPostgres(path)
	}
	if err != nil {
		return fmt.Errorf("cluster %s: write %s: %w", c.Name, path, err)
	}
	return nil
}

// Start starts the server (pg_ctl start -w) and waits up to 60 s until it
// accepts connections. The error carries the tail of the server log.
func (c *Cluster) Start(ctx context.Context) error {
	if err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-l", c.LogFile, "-w", "-t", "60", "start"); err != nil {
		return fmt.Errorf("%w\nserver log tail:\n%s", err, c.LogTail(30))
	}
	return nil
}

// Stop shuts the server down in fast mode and waits. It does nothing when
// the server is not running, so it is safe to call twice, after Kill, or on a
// cluster never started.
func (c *Cluster) Stop(ctx context.Context) error {
	return c.stop(ctx, "fast")
}

// Kill stops the server in immediate mode, as a crash would: the next start
// runs crash recovery.
func (c *Cluster) Kill() error {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	return c.stop(ctx, "immediate")
}

func (c *Cluster) stop(ctx context.Context, mode string) error {
	if running, err := c.running(ctx); err != nil || !running {
		return err
	}
	err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "-m", mode, "-w", "-t", "60", "stop")
	if err != nil {
		// It may have exited between the check and the signal.
		if running, rerr := c.running(ctx); rerr == nil && !running {
			return nil
		}
	}
	return err
}

// running reports whether a postmaster runs on the data directory, per
// postmaster.pid and pg_ctl status (exit status 3: not running).
func (c *Cluster) running(ctx context.Context) (bool, error) {
	if _, err := os.Stat(filepath.Join(c.DataDir, "postmaster.pid")); errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	err := c.run(ctx, "pg_ctl", "-D", c.DataDir, "status")
	if err == nil {
		return true, nil
	}
	if ee := (*exec.ExitError)(nil); errors.As(err, &ee) && ee.ExitCode() == 3 {
		return false, nil
	}
	return false, err
}

// Promote ends recovery on a standby (pg_ctl promote) and waits until it
// accepts writes.
func (c *Cluster) Promote(ctx context.Context) error {
	return c.run(ctx, "pg_ctl", "-D", c.DataDir, "-w", "-t", "60", "promote")
}

// LogTail returns the last n lines of the server log.
func (c *Cluster) LogTail(n int) string {
	return tailFile(c.LogFile, n)
}

// ConnString is a libpq connection string for SQL.
func (c *Cluster) ConnString() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres dbname=postgres sslmode=disable", c.Port)
}

// ReplicationConnString is a libpq connection string for primary_conninfo
// or a relay's --upstream. It names no database and no replication mode:
// the walreceiver and the relay add what they need.
func (c *Cluster) ReplicationConnString() string {
	return fmt.Sprintf("host=127.0.0.1 port=%d user=postgres sslmode=disable", c.Port)
}

// Connect opens a SQL connection to the postgres database.
func (c *Cluster) Connect(ctx context.Context) (*pgx.Conn, error) {
	conn, err := pgx.Connect(ctx, c.ConnString())
	if err != nil {
		return nil, fmt.Errorf("cluster %s: %w", c.Name, err)
	}
	return conn, nil
}

// run executes a PostgreSQL binary (as postgres when root); the error names
// the cluster and the command and carries its output.
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

// tailFile returns the last n lines of a file, or why it could not be read.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Open describes an existing data directory (not started here).
func Open(name, binDir, dataDir string, port int, logFile string) (*Cluster, error) {
	if binDir == "" {
		d, err := FindBinDir()
		if err != nil {
			return nil, err
		}
		binDir = d
	}
	return &Cluster{Name: name, BinDir: binDir, DataDir: dataDir, Port: port, LogFile: logFile, log: slog.New(slog.DiscardHandler)}, nil
}

// Rejoin turns this former primary into a standby of source's timeline:
// it stops the server if running, rewinds it with pg_rewind against source
// (nothing to do when it did not diverge; needs wal_log_hints or data
// checksums), adds standby.signal, and puts its own port, name and
// primary_conninfo back over the settings pg_rewind copied from source. It
// does not start the server.
func (c *Cluster) Rejoin(ctx context.Context, sourceConnString, primaryConninfo string, conf map[string]string) error {
	if running, _ := c.running(ctx); running {
		if err := c.Stop(ctx); err != nil {
			return err
		}
	}
	// pg_rewind reads the source's timeline from its control file, which a
	// promotion updates only at its next checkpoint: without this it may
	// see both on the same timeline and rewind nothing.
	src, err := pgx.Connect(ctx, sourceConnString)
	if err != nil {
		return fmt.Errorf("connect to the new primary: %w", err)
	}
	_, err = src.Exec(ctx, "CHECKPOINT")
	src.Close(context.Background())
	if err != nil {
		return fmt.Errorf("CHECKPOINT on the new primary: %w", err)
	}
	if err := c.run(ctx, "pg_rewind", "--target-pgdata", c.DataDir, "--source-server", sourceConnString, "--no-sync"); err != nil {
		return err
	}
	if err := c.writeOwned(filepath.Join(c.DataDir, "standby.signal"), "", false); err != nil {
		return err
	}
	settings := map[string]string{"port": strconv.Itoa(c.Port), "cluster_name": c.Name, "primary_conninfo": primaryConninfo}
	for k, v := range conf {
		settings[k] = v
	}
	return c.SetConf(settings)
}

// Clone copies this cluster's data directory, which must not be running
// (a fresh base backup, say), into a new cluster under opts.BaseDir with a
// port and cluster_name of its own and opts.Conf on top. Many standbys of
// one primary are made far quicker this way than by a base backup each. It
// does not start the server.
func (c *Cluster) Clone(ctx context.Context, opts Options) (*Cluster, error) {
	if opts.BinDir == "" {
		opts.BinDir = c.BinDir
	}
	if err := opts.fill(); err != nil {
		return nil, err
	}
	n, err := newCluster(opts)
	if err != nil {
		return nil, err
	}
	// cp -a keeps the owner (postgres) and modes PostgreSQL insists on.
	if out, err := exec.CommandContext(ctx, "cp", "-a", c.DataDir, n.DataDir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("cluster %s: copy %s: %w: %s", n.Name, c.DataDir, err, bytes.TrimSpace(out))
	}
	conf := map[string]string{"port": strconv.Itoa(n.Port), "cluster_name": opts.Name}
	for k, v := range opts.Conf {
		conf[k] = v
	}
	if err := n.SetConf(conf); err != nil {
		return nil, err
	}
	return n, nil
}

// SetStandby makes the (stopped) cluster a standby streaming from
// primaryConninfo when it next starts: standby.signal and primary_conninfo.
func (c *Cluster) SetStandby(primaryConninfo string) error {
	if err := c.writeOwned(filepath.Join(c.DataDir, "standby.signal"), "", false); err != nil {
		return err
	}
	return c.SetConf(map[string]string{"primary_conninfo": primaryConninfo})
}
