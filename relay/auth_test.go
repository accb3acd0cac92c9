package relay

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// authServer accepts one connection at a time and runs Authenticate, then
// completes the startup so that a real pgconn client sees success.
func authServer(t *testing.T, creds *Credentials) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { ln.Close(); <-done })
	go func() {
		defer close(done)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			be := pgproto3.NewBackend(conn, conn)
			msg, err := be.ReceiveStartupMessage()
			if err != nil {
				conn.Close()
				continue
			}
			sm := msg.(*pgproto3.StartupMessage)
			if err := Authenticate(be, sm.Parameters["user"], conn.RemoteAddr(), creds); err != nil {
				var pe *PGError
				if errors.As(err, &pe) {
					be.Send(pe.Response())
					be.Flush()
				}
				conn.Close()
				continue
			}
			be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"})
			be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
			be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
			be.Flush()
			conn.Close()
		}
	}()
	return ln.Addr().String()
}

func connectAs(addr, user, password string) error {
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password='%s' sslmode=disable", host, port, user, password))
	if err != nil {
		return err
	}
	conn.Close(ctx)
	return nil
}

// verifier computes a PostgreSQL SCRAM-SHA-256 verifier independently of
// the code under test.
func verifier(password string, salt []byte, iters int) string {
	salted, _ := pbkdf2.Key(sha256.New, password, salt, iters, 32)
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	clientKey := mac(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	server := mac(salted, "Server Key")
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iters, enc(salt), enc(stored[:]), enc(server))
}

func TestSCRAMAuthentication(t *testing.T) {
	creds, err := NewCredentials(map[string]string{
		"alice": "wonderland",
		"bob":   verifier("builder", []byte("0123456789abcdef"), 4096),
	})
	if err != nil {
		t.Fatal(err)
	}
	addr := authServer(t, creds)
	if err := connectAs(addr, "alice", "wonderland"); err != nil {
		t.Errorf("alice with the right password: %v", err)
	}
	if err := connectAs(addr, "bob", "builder"); err != nil {
		t.Errorf("bob with a verifier: %v", err)
	}
	for _, tt := range []struct{ user, pw string }{{"alice", "wrong"}, {"bob", "wonderland"}, {"mallory", "x"}} {
		err := connectAs(addr, tt.user, tt.pw)
		assertPgError(t, err, "28P01", fmt.Sprintf("password authentication failed for user \"%s\"", tt.user))
	}
}

func TestTrustOnlyLoopbackWithoutUsers(t *testing.T) {
	addr := authServer(t, nil)
	if err := connectAs(addr, "anyone", ""); err != nil {
		t.Errorf("loopback without users: %v", err)
	}
	// A remote client: Authenticate refuses before any exchange.
	srv, cli := net.Pipe()
	defer cli.Close()
	be := pgproto3.NewBackend(srv, srv)
	err := Authenticate(be, "x", &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 5432}, nil)
	var pe *PGError
	if !errors.As(err, &pe) || pe.Code != "28000" || pe.Severity != "FATAL" {
		t.Errorf("non-loopback without users: %v", err)
	}
	for addr, want := range map[string]bool{"127.0.0.1:1": true, "127.8.9.1:1": true, "[::1]:1": true, "192.168.1.1:1": false} {
		a, _ := net.ResolveTCPAddr("tcp", addr)
		if isLoopback(a) != want {
			t.Errorf("isLoopback(%s) = %v", addr, !want)
		}
	}
}

func TestLoadCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	os.WriteFile(good, []byte("# users\n\nalice:pw:with:colons\nbob:"+verifier("b", []byte("salt"), 4096)+"\n"), 0o600)
	c, err := LoadCredentialsFile(good)
	if err != nil || c.Len() != 2 {
		t.Fatalf("LoadCredentialsFile: %v, %d users", err, c.Len())
	}
	addr := authServer(t, c)
	if err := connectAs(addr, "alice", "pw:with:colons"); err != nil {
		t.Errorf("password with colons: %v", err)
	}
	for name, content := range map[string]string{
		"nocolon":  "alice\n",
		"empty":    "alice:\n",
		"dup":      "a:x\na:y\n",
		"verifier": "a:SCRAM-SHA-256$4096:bad\n",
	} {
		p := filepath.Join(dir, name)
		os.WriteFile(p, []byte("# c\n"+content), 0o600)
		_, err := LoadCredentialsFile(p)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		if !strings.Contains(err.Error(), "line 2") && name != "dup" && name != "verifier" {
			t.Errorf("%s: error does not name the line: %v", name, err)
		}
		if strings.Contains(err.Error(), "bad") || strings.Contains(err.Error(), ":y") {
			t.Errorf("%s: error reveals the secret: %v", name, err)
		}
	}
}
