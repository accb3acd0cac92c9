package pgcluster

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
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
)

// ErrNotInstalled means no PostgreSQL server binaries were found. Errors from
// FindBinDir wrap it with what to install.
var ErrNotInstalled = errors.New("PostgreSQL server binaries not found")

// installHint tells an operator how to get the binaries.
const installHint = "install PostgreSQL 15 or newer (Debian/Ubuntu: apt-get install -y postgresql) or set WALRELAY_PG_BIN to its bin directory"

// serverBinaries must all be in a bin directory for it to count.
var serverBinaries = []string{"postgres", "initdb", "pg_ctl"}

// FindBinDir locates initdb, postgres and friends: $WALRELAY_PG_BIN if set;
// else the newest /usr/lib/postgresql/*/bin; else `pg_config --bindir`; else
// the directory postgres on PATH resolves to.
func FindBinDir() (string, error) {
	if d := os.Getenv("WALRELAY_PG_BIN"); d != "" {
		if err := checkBinDir(d); err != nil {
			return "", fmt.Errorf("%w in WALRELAY_PG_BIN=%s: %w; %s", ErrNotInstalled, d, err, installHint)
		}
		return d, nil
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.SliceStable(dirs, func(i, j int) bool { return majorOf(dirs[i]) > majorOf(dirs[j]) })
	for _, d := range dirs {
		if checkBinDir(d) == nil {
			return d, nil
		}
	}
	if out, err := exec.Command("pg_config", "--bindir").Output(); err == nil {
		if d := strings.TrimSpace(string(out)); checkBinDir(d) == nil {
			return d, nil
		}
	}
	if p, err := exec.LookPath("postgres"); err == nil {
		// /usr/local/bin/postgres is often a symlink into the real bin
		// directory, which also holds pg_basebackup and pgbench.
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		if d := filepath.Dir(p); checkBinDir(d) == nil {
			return d, nil
		}
	}
	return "", fmt.Errorf("%w: %s", ErrNotInstalled, installHint)
}

func checkBinDir(dir string) error {
	for _, b := range serverBinaries {
		if _, err := os.Stat(filepath.Join(dir, b)); err != nil {
			return err
		}
	}
	return nil
}

// majorOf gives 15 for /usr/lib/postgresql/15/bin, 0 if not a number.
func majorOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Command builds an exec.Cmd for a PostgreSQL binary in binDir that runs as
// the postgres user when this process is root, in /, with LC_ALL=C.
func Command(ctx context.Context, binDir, prog string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, prog), args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "PGAPPNAME="+prog)
	if cred, _ := postgresCredential(); cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		cmd.Env = append(cmd.Env, "HOME=/tmp")
	}
	cmd.Dir = "/"
	return cmd
}

var (
	credOnce sync.Once
	credVal  *syscall.Credential
	credErr  error
)

// postgresCredential is the postgres user's uid and gid when this process is
// root, nil otherwise. It fails only as root without a postgres user.
func postgresCredential() (*syscall.Credential, error) {
	credOnce.Do(func() {
		if os.Geteuid() != 0 {
			return
		}
		u, err := user.Lookup("postgres")
		if err != nil {
			credErr = fmt.Errorf("running as root, PostgreSQL must run as user postgres: %w", err)
			return
		}
		uid, err1 := strconv.ParseUint(u.Uid, 10, 32)
		gid, err2 := strconv.ParseUint(u.Gid, 10, 32)
		if err := errors.Join(err1, err2); err != nil {
			credErr = fmt.Errorf("user postgres: %w", err)
			return
		}
		credVal = &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid)}
	})
	return credVal, credErr
}

// chownPostgres gives path to the user the binaries run as.
func chownPostgres(path string) error {
	cred, err := postgresCredential()
	if err != nil || cred == nil {
		return err
	}
	if err := os.Chown(path, int(cred.Uid), int(cred.Gid)); err != nil {
		return fmt.Errorf("chown %s to postgres: %w", path, err)
	}
	return nil
}

// makeOwnedDir creates dir (0700) for the user the binaries run as.
func makeOwnedDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return chownPostgres(dir)
}

// prepareBase creates base and, when the binaries run as another user, makes
// it and its parents traversable (o+x), so that user can reach directories
// under a root-owned 0700 t.TempDir(). Nothing else is changed.
func prepareBase(base string) error {
	if err := os.MkdirAll(base, 0o755); err != nil {
		return err
	}
	cred, err := postgresCredential()
	if err != nil || cred == nil {
		return err
	}
	abs, err := filepath.Abs(base)
	if err != nil {
		return err
	}
	for d := abs; ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil {
			return err
		}
		if st.Mode().Perm()&0o001 == 0 {
			if err := os.Chmod(d, st.Mode().Perm()|0o011); err != nil {
				return fmt.Errorf("make %s traversable: %w", d, err)
			}
		}
		if d == filepath.Dir(d) {
			return nil
		}
	}
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
//
// It picks below the kernel's ephemeral range (ip_local_port_range) when
// it can: a port from that range, free when checked, can be taken by any
// outgoing connection before the server it is meant for binds it (CI saw a
// relay fail with "address already in use" that way). Ports are handed
// out at most once per process, starting at a random place so that test
// binaries running side by side rarely meet.
func FreePort() (int, error) {
	ports.mu.Lock()
	defer ports.mu.Unlock()
	if ports.given == nil {
		ports.given = map[int]bool{}
		ports.low, ports.high = portRange()
		if ports.high > ports.low {
			ports.next = ports.low + rand.IntN(ports.high-ports.low)
		}
	}
	for i := 0; ports.high > ports.low && i < ports.high-ports.low; i++ {
		p := ports.next
		ports.next++
		if ports.next >= ports.high {
			ports.next = ports.low
		}
		if ports.given[p] {
			continue
		}
		ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", p))
		if err != nil {
			continue
		}
		ln.Close()
		ports.given[p] = true
		return p, nil
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// ports is what FreePort has handed out in this process.
var ports struct {
	mu        sync.Mutex
	given     map[int]bool
	low, high int // the range it picks from, [low, high)
	next      int
}

// portRange is the range FreePort picks from: from 10000 up to the start
// of the ephemeral range, or nothing if that starts too low to leave 1000.
func portRange() (low, high int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) < 1 {
		return 0, 0
	}
	start, err := strconv.Atoi(f[0])
	if err != nil || start < 11000 {
		return 0, 0
	}
	return 10000, start
}
