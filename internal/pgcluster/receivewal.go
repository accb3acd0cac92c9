package pgcluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"
)

// stopGrace is how long pg_receivewal gets to exit after SIGINT before it
// is killed.
const stopGrace = 30 * time.Second

// WALReceiver is a running pg_receivewal. Its owner calls Stop or Wait.
type WALReceiver struct {
	Name    string
	Dir     string // where the segments go
	LogFile string // pg_receivewal's stdout and stderr

	proc *os.Process
	done chan struct{} // closed once the process has been waited for
	err  error         // its exit status; read after done is closed
}

// ReceiveWAL starts `pg_receivewal -D baseDir/name -h host -p port -U postgres
// --no-loop -v extra...` against a server or a relay, writing its output to
// baseDir/name.log. Cancelling ctx stops it like Stop does.
func ReceiveWAL(ctx context.Context, binDir, baseDir, name, host string, port int, extra ...string) (*WALReceiver, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("pg_receivewal %s: %w", name, err)
	}
	if err := prepareBase(baseDir); err != nil {
		return nil, fmt.Errorf("pg_receivewal %s: %w", name, err)
	}
	dir := filepath.Join(baseDir, name)
	if err := makeOwnedDir(dir); err != nil {
		return nil, fmt.Errorf("pg_receivewal %s: %w", name, err)
	}
	logPath := filepath.Join(baseDir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("pg_receivewal %s: %w", name, err)
	}
	args := append([]string{"-D", dir, "-h", host, "-p", strconv.Itoa(port), "-U", "postgres", "--no-loop", "-v"}, extra...)
	cmd := Command(ctx, binDir, "pg_receivewal", args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Cancel = func() error { return cmd.Process.Signal(syscall.SIGINT) }
	cmd.WaitDelay = stopGrace
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("pg_receivewal %s: start: %w", name, err)
	}
	r := &WALReceiver{Name: name, Dir: dir, LogFile: logPath, proc: cmd.Process, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = cmd.Wait()
		logFile.Close()
	}()
	return r, nil
}

// Stop sends SIGINT, on which pg_receivewal flushes and exits 0, and waits;
// after 30 s it kills the process. Safe to call more than once and after it
// has exited by itself.
func (r *WALReceiver) Stop() error {
	select {
	case <-r.done:
		return r.exitErr()
	default:
	}
	if err := r.proc.Signal(syscall.SIGINT); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("pg_receivewal %s: %w", r.Name, err)
	}
	select {
	case <-r.done:
		return r.exitErr()
	case <-time.After(stopGrace):
		r.proc.Kill()
		<-r.done
		return fmt.Errorf("pg_receivewal %s: did not exit within %s of SIGINT; killed", r.Name, stopGrace)
	}
}

// Wait waits for pg_receivewal to exit by itself (with --no-loop, when its
// server goes away) and returns its exit status with its output.
func (r *WALReceiver) Wait() error {
	<-r.done
	return r.exitErr()
}

func (r *WALReceiver) exitErr() error {
	if r.err == nil {
		return nil
	}
	log, _ := os.ReadFile(r.LogFile)
	return fmt.Errorf("pg_receivewal %s: %w: %s", r.Name, r.err, bytes.TrimSpace(log))
}

// segmentName matches a completed WAL segment file: timeline, log and
// segment number, 8 upper-case hex digits each.
var segmentName = regexp.MustCompile(`^[0-9A-F]{24}$`)

// CompareSegments compares byte for byte every completed segment present in
// both directories (not .partial files, not files in one only) and returns
// how many it compared. The error names the first segment that differs and
// where; it is also an error to have no segment in common.
func CompareSegments(dirA, dirB string) (int, error) {
	entries, err := os.ReadDir(dirA)
	if err != nil {
		return 0, fmt.Errorf("compare segments: %w", err)
	}
	n := 0
	for _, e := range entries {
		if !e.Type().IsRegular() || !segmentName.MatchString(e.Name()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dirB, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("compare segment %s: %w", e.Name(), err)
		}
		a, err := os.ReadFile(filepath.Join(dirA, e.Name()))
		if err != nil {
			return n, fmt.Errorf("compare segment %s: %w", e.Name(), err)
		}
		if i := firstDiff(a, b); i >= 0 {
			return n, fmt.Errorf("segment %s differs at offset %d (%d bytes in %s, %d in %s)",
				e.Name(), i, len(a), dirA, len(b), dirB)
		}
		n++
	}
	if n == 0 {
		return 0, fmt.Errorf("no completed segment in common between %s and %s", dirA, dirB)
	}
	return n, nil
}

// firstDiff is the offset of the first byte where a and b differ, the
// shorter length if one is a prefix of the other, or -1 if they are equal.
func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	if len(a) != len(b) {
		return min(len(a), len(b))
	}
	return -1
}
