package pgcluster

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"syscall"
	"time"
)

// WALReceiver is a running pg_receivewal.
type WALReceiver struct {
	Dir     string
	LogFile string
	cmd     *exec.Cmd
	done    chan error
}

// ReceiveWAL starts pg_receivewal into baseDir/name against host:port.
func ReceiveWAL(ctx context.Context, binDir, baseDir, name, host string, port int, extra ...string) (*WALReceiver, error) {
	if err := prepareBase(baseDir); err != nil {
		return nil, err
	}
	dir := filepath.Join(baseDir, name)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	if err := chownPostgres(dir); err != nil {
		return nil, err
	}
	logPath := filepath.Join(baseDir, name+".log")
	logFile, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	args := append([]string{"-D", dir, "-h", host, "-p", strconv.Itoa(port), "-U", "postgres", "--no-loop", "-v"}, extra...)
	cmd := Command(context.Background(), binDir, "pg_receivewal", args...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return nil, fmt.Errorf("start pg_receivewal: %w", err)
	}
	r := &WALReceiver{Dir: dir, LogFile: logPath, cmd: cmd, done: make(chan error, 1)}
	go func() {
		r.done <- cmd.Wait()
		logFile.Close()
	}()
	return r, nil
}

// Stop sends SIGINT (pg_receivewal's clean exit) and waits.
func (r *WALReceiver) Stop() error {
	r.cmd.Process.Signal(syscall.SIGINT)
	select {
	case err := <-r.done:
		r.done <- err
		return r.exitErr(err)
	case <-time.After(30 * time.Second):
		r.cmd.Process.Kill()
		return fmt.Errorf("pg_receivewal did not stop on SIGINT")
	}
}

// Wait waits for pg_receivewal to exit by itself.
func (r *WALReceiver) Wait() error {
	err := <-r.done
	r.done <- err
	return r.exitErr(err)
}

func (r *WALReceiver) exitErr(err error) error {
	if err == nil {
		return nil
	}
	log, _ := os.ReadFile(r.LogFile)
	return fmt.Errorf("pg_receivewal: %w: %s", err, bytes.TrimSpace(log))
}

var segmentName = regexp.MustCompile(`^[0-9A-F]{24}$`)

// CompareSegments compares byte for byte every completed segment present in
// both directories, returning how many it compared.
func CompareSegments(dirA, dirB string) (int, error) {
	entries, err := os.ReadDir(dirA)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		if !segmentName.MatchString(e.Name()) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dirB, e.Name()))
		if os.IsNotExist(err) {
			continue
		}
		if err != nil {
			return n, err
		}
		a, err := os.ReadFile(filepath.Join(dirA, e.Name()))
		if err != nil {
			return n, err
		}
		if len(a) != len(b) {
			return n, fmt.Errorf("segment %s: %d bytes in %s, %d in %s", e.Name(), len(a), dirA, len(b), dirB)
		}
		if i := firstDiff(a, b); i >= 0 {
			return n, fmt.Errorf("segment %s differs at offset %d (%s vs %s)", e.Name(), i, dirA, dirB)
		}
		n++
	}
	if n == 0 {
		return 0, fmt.Errorf("no completed segment in common between %s and %s", dirA, dirB)
	}
	return n, nil
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}
