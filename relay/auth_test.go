package relay

import (
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// authServer serves connections one at a time: StartupMessage, Authenticate,
// then what pgconn needs to call the connection established, or the
// returned error's ErrorResponse.
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
			serveAuth(conn, creds)
		}
	}()
	return ln.Addr().String()
}

func serveAuth(conn net.Conn, creds *Credentials) {
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	be := pgproto3.NewBackend(conn, conn)
	msg, err := be.ReceiveStartupMessage()
	if err != nil {
		return
	}
	sm, ok := msg.(*pgproto3.StartupMessage)
	if !ok {
		return
	}
	if err := Authenticate(be, sm.Parameters["user"], conn.RemoteAddr(), creds); err != nil {
		var pe *PGError
		if errors.As(err, &pe) {
			be.Send(pe.Response())
			be.Flush()
		}
		return
	}
	be.Send(&pgproto3.ParameterStatus{Name: "server_version", Value: "15.0"})
	be.Send(&pgproto3.BackendKeyData{ProcessID: 1, SecretKey: []byte{0, 0, 0, 1}})
	be.Send(&pgproto3.ReadyForQuery{TxStatus: 'I'})
	be.Flush()
}

// connectAs connects with pgconn, the client libpq-compatible tools behave like.
func connectAs(addr, user, password string) error {
	host, port, _ := net.SplitHostPort(addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	pw := strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(password)
	conn, err := pgconn.Connect(ctx, fmt.Sprintf("host=%s port=%s user=%s password='%s' sslmode=disable", host, port, user, pw))
	if err != nil {
		return err
	}
	return conn.Close(ctx)
}

// verifier computes a PostgreSQL SCRAM-SHA-256 verifier (RFC 5802, as
// pg_authid stores it) independently of the code under test.
func verifier(password string, salt []byte, iters int) string {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iters, 32)
	if err != nil {
		panic(err)
	}
	mac := func(key []byte, msg string) []byte {
		h := hmac.New(sha256.New, key)
		h.Write([]byte(msg))
		return h.Sum(nil)
	}
	stored := sha256.Sum256(mac(salted, "Client Key"))
	server := mac(salted, "Server Key")
	enc := base64.StdEncoding.EncodeToString
	return fmt.Sprintf("SCRAM-SHA-256$%d:%s$%s:%s", iters, enc(salt), enc(stored[:]), enc(server))
}

// wantPGError checks that err is a *PgError from the server with this code
// and message, and FATAL severity.
func wantPGError(t *testing.T, what string, err error, code, msg string) {
	t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) {
		t.Errorf("%s: got %v, want a server error %s", what, err, code)
		return
	}
	if pe.Code != code || pe.Message != msg || pe.Severity != "FATAL" {
		t.Errorf("%s: got %s %s %q, want FATAL %s %q", what, pe.Severity, pe.Code, pe.Message, code, msg)
	}
}

func TestAuthSCRAM(t *testing.T) {
	creds, err := NewCredentials(map[string]string{
		"alice": "wonderland",
		"bob":   verifier("builder", []byte("0123456789abcdef"), 4096),
		"carol": verifier("x'\\ y", []byte("salt"), 10000),
		"dave":  "pässwörd",
	})
	if err != nil {
		t.Fatal(err)
	}
	if creds.Len() != 4 {
		t.Fatalf("Len = %d", creds.Len())
	}
	addr := authServer(t, creds)
	for _, tt := range []struct{ user, pw string }{
		{"alice", "wonderland"},
		{"bob", "builder"},  // verifier with PostgreSQL's defaults
		{"carol", "x'\\ y"}, // verifier with other iterations, odd characters
		{"dave", "pässwörd"},
	} {
		if err := connectAs(addr, tt.user, tt.pw); err != nil {
			t.Errorf("%s with the right password: %v", tt.user, err)
		}
	}
	for _, tt := range []struct{ user, pw string }{
		{"alice", "wrong"},
		{"alice", ""},
		{"bob", "wonderland"},
		{"Alice", "wonderland"},
		{"mallory", "x"},
	} {
		err := connectAs(addr, tt.user, tt.pw)
		wantPGError(t, tt.user+"/"+tt.pw, err, "28P01", fmt.Sprintf("password authentication failed for user \"%s\"", tt.user))
	}
}

func TestAuthTrustLoopbackWithoutUsers(t *testing.T) {
	empty, err := NewCredentials(nil)
	if err != nil {
		t.Fatal(err)
	}
	for name, creds := range map[string]*Credentials{"nil": nil, "empty": empty} {
		addr := authServer(t, creds)
		if err := connectAs(addr, "anyone", ""); err != nil {
			t.Errorf("%s credentials, loopback client: %v", name, err)
		}
		// A remote client is refused before anything is sent: over a pipe
		// nobody reads, a write would block.
		srv, cli := net.Pipe()
		err := Authenticate(pgproto3.NewBackend(srv, srv), "x", &net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 5432}, creds)
		srv.Close()
		cli.Close()
		var pe *PGError
		if !errors.As(err, &pe) || pe.Code != "28000" || pe.Severity != "FATAL" ||
			pe.Message != "no users configured on this relay: only loopback clients are trusted (configure --auth-file)" {
			t.Errorf("%s credentials, remote client: %v", name, err)
		}
	}
}

func TestAuthIsLoopback(t *testing.T) {
	for _, tt := range []struct {
		addr net.Addr
		want bool
	}{
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 1}, true},
		{&net.TCPAddr{IP: net.ParseIP("127.8.9.1")}, true},
		{&net.TCPAddr{IP: net.ParseIP("::1")}, true},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:127.0.0.1")}, true},
		{&net.UnixAddr{Name: "/tmp/.s.PGSQL.5432", Net: "unix"}, true},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3")}, false},
		{&net.TCPAddr{IP: net.ParseIP("192.168.1.1")}, false},
		{&net.TCPAddr{IP: net.ParseIP("::2")}, false},
		{&net.TCPAddr{IP: net.ParseIP("0.0.0.0")}, false},
		{&net.TCPAddr{}, false},
		{fakeAddr("127.0.0.1:5432"), true},
		{fakeAddr("[::1]:5432"), true},
		{fakeAddr("10.0.0.1:5432"), false},
		{fakeAddr("pipe"), false},
		{nil, false},
	} {
		if got := isLoopback(tt.addr); got != tt.want {
			t.Errorf("isLoopback(%v) = %v, want %v", tt.addr, got, tt.want)
		}
	}
}

type fakeAddr string

func (a fakeAddr) Network() string { return "fake" }
func (a fakeAddr) String() string  { return string(a) }

// pipeAuth runs Authenticate for a remote user against a client driven by
// the test over net.Pipe, reads the AuthenticationSASL, and returns the
// client side and Authenticate's result.
func pipeAuth(t *testing.T, user string, creds *Credentials) (*pgproto3.Frontend, net.Conn, <-chan error) {
	t.Helper()
	srv, cli := net.Pipe()
	t.Cleanup(func() { cli.Close(); srv.Close() })
	deadline := time.Now().Add(10 * time.Second)
	srv.SetDeadline(deadline)
	cli.SetDeadline(deadline)
	res := make(chan error, 1)
	go func() {
		res <- Authenticate(pgproto3.NewBackend(srv, srv), user, &net.TCPAddr{IP: net.ParseIP("10.1.2.3")}, creds)
	}()
	fe := pgproto3.NewFrontend(cli, cli)
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	if sasl, ok := msg.(*pgproto3.AuthenticationSASL); !ok || len(sasl.AuthMechanisms) != 1 || sasl.AuthMechanisms[0] != "SCRAM-SHA-256" {
		t.Fatalf("first message %#v, want AuthenticationSASL offering only SCRAM-SHA-256", msg)
	}
	return fe, cli, res
}

func wantFatal(t *testing.T, what string, res <-chan error, code, msg string) {
	t.Helper()
	err := <-res
	var pe *PGError
	if !errors.As(err, &pe) || pe.Severity != "FATAL" || pe.Code != code || pe.Message != msg {
		t.Errorf("%s: Authenticate = %v, want FATAL %s %q", what, err, code, msg)
	}
}

func TestAuthProtocolViolations(t *testing.T) {
	creds, err := NewCredentials(map[string]string{"alice": "wonderland"})
	if err != nil {
		t.Fatal(err)
	}
	send := func(fe *pgproto3.Frontend, msg pgproto3.FrontendMessage) {
		fe.Send(msg)
		if err := fe.Flush(); err != nil {
			t.Fatal(err)
		}
	}

	fe, _, res := pipeAuth(t, "alice", creds)
	send(fe, &pgproto3.Query{String: "IDENTIFY_SYSTEM"})
	wantFatal(t, "query instead of SASL", res, "08P01", "expected SASL response, got message type 81")

	fe, _, res = pipeAuth(t, "alice", creds)
	send(fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256-PLUS", Data: []byte("p=tls-server-end-point,,n=,r=abc")})
	wantFatal(t, "PLUS mechanism", res, "08P01", "client selected an invalid SASL authentication mechanism")

	fe, _, res = pipeAuth(t, "alice", creds)
	send(fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("garbage")})
	wantFatal(t, "malformed client-first", res, "08P01", "malformed SCRAM message")

	fe, _, res = pipeAuth(t, "alice", creds)
	send(fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,a=bob,n=,r=abc")})
	wantFatal(t, "authorization identity", res, "0A000", "client uses authorization identity, but it is not supported")

	fe, _, res = pipeAuth(t, "alice", creds)
	send(fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abc")})
	if _, err := fe.Receive(); err != nil {
		t.Fatal(err)
	}
	send(fe, &pgproto3.Query{String: "x"})
	wantFatal(t, "query instead of the client-final", res, "08P01", "expected SASL response, got message type 81")

	fe, _, res = pipeAuth(t, "alice", creds)
	send(fe, &pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=abc")})
	if _, err := fe.Receive(); err != nil {
		t.Fatal(err)
	}
	send(fe, &pgproto3.SASLResponse{Data: []byte("c=biws,r=wrong,p=AAAA")})
	wantFatal(t, "bad client-final", res, "28P01", `password authentication failed for user "alice"`)

	// libpq hangs up when it has no password to send: nothing to answer.
	for _, terminate := range []bool{false, true} {
		fe, cli, res := pipeAuth(t, "alice", creds)
		if terminate {
			send(fe, &pgproto3.Terminate{})
		}
		cli.Close()
		if err := <-res; !errors.Is(err, io.EOF) || errors.As(err, new(*PGError)) {
			t.Errorf("client hung up (Terminate sent: %v): Authenticate = %v, want an io.EOF that is not a *PGError", terminate, err)
		}
	}
}

// serverFirst sends a client-first message as user and returns the salt and
// iteration count of the server-first answer; then it hangs up.
func serverFirst(t *testing.T, user string, creds *Credentials) (salt, iters string) {
	t.Helper()
	fe, cli, res := pipeAuth(t, user, creds)
	fe.Send(&pgproto3.SASLInitialResponse{AuthMechanism: "SCRAM-SHA-256", Data: []byte("n,,n=,r=clientnonce")})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	msg, err := fe.Receive()
	if err != nil {
		t.Fatal(err)
	}
	cont, ok := msg.(*pgproto3.AuthenticationSASLContinue)
	if !ok {
		t.Fatalf("%s: got %#v, want AuthenticationSASLContinue", user, msg)
	}
	fields := map[string]string{}
	for _, f := range strings.Split(string(cont.Data), ",") {
		k, v, _ := strings.Cut(f, "=")
		fields[k] = v
	}
	if !strings.HasPrefix(fields["r"], "clientnonce") || len(fields["r"]) <= len("clientnonce") || fields["s"] == "" {
		t.Errorf("%s: server-first %q", user, cont.Data)
	}
	cli.Close()
	<-res
	return fields["s"], fields["i"]
}

// TestAuthUnknownUserLooksReal: an unknown user gets a server-first message
// like a real one (a salt of its own, stable across attempts, and the usual
// iteration count), so probing cannot tell which users exist.
func TestAuthUnknownUserLooksReal(t *testing.T) {
	creds, err := NewCredentials(map[string]string{"alice": "wonderland"})
	if err != nil {
		t.Fatal(err)
	}
	aliceSalt, aliceIters := serverFirst(t, "alice", creds)
	ghostSalt, ghostIters := serverFirst(t, "ghost", creds)
	ghostAgain, _ := serverFirst(t, "ghost", creds)
	otherSalt, _ := serverFirst(t, "other", creds)
	if aliceIters != "4096" || ghostIters != aliceIters {
		t.Errorf("iterations: alice %s, unknown user %s", aliceIters, ghostIters)
	}
	if ghostSalt != ghostAgain {
		t.Errorf("unknown user's salt changes between attempts: %s, %s", ghostSalt, ghostAgain)
	}
	if ghostSalt == otherSalt || ghostSalt == aliceSalt {
		t.Errorf("unknown users share a salt: ghost %s, other %s, alice %s", ghostSalt, otherSalt, aliceSalt)
	}
	if raw, err := base64.StdEncoding.DecodeString(ghostSalt); err != nil || len(raw) != 16 {
		t.Errorf("unknown user's salt %q is not 16 bytes of base64", ghostSalt)
	}
}

func TestAuthNewCredentialsErrors(t *testing.T) {
	for name, users := range map[string]map[string]string{
		"empty user":   {"": "pw"},
		"md5 verifier": {"u": "md5" + strings.Repeat("0a", 16)},
		"bad verifier": {"u": "SCRAM-SHA-256$4096:c2FsdA==$bm90MzJieXRlcw==:bm90MzJieXRlcw=="},
		"no keys":      {"u": "SCRAM-SHA-256$4096:c2FsdA=="},
		"bad iters":    {"u": "SCRAM-SHA-256$0:" + strings.SplitN(verifier("p", []byte("s"), 1), ":", 2)[1]},
	} {
		_, err := NewCredentials(users)
		if err == nil {
			t.Errorf("%s: accepted", name)
			continue
		}
		for _, secret := range users {
			if strings.Contains(err.Error(), secret) {
				t.Errorf("%s: error reveals the secret: %v", name, err)
			}
		}
	}
}

func TestAuthLoadCredentialsFile(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good")
	content := "# users of this relay\r\n\n  \n  # indented comment\nalice:pw:with:colons\r\n bob :" +
		verifier("b", []byte("salt"), 4096) + "\ncarol: spaced pw \n"
	if err := os.WriteFile(good, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := LoadCredentialsFile(good)
	if err != nil {
		t.Fatalf("LoadCredentialsFile: %v", err)
	}
	if c.Len() != 3 {
		t.Fatalf("Len = %d, want 3", c.Len())
	}
	addr := authServer(t, c)
	for _, tt := range []struct{ user, pw string }{{"alice", "pw:with:colons"}, {"bob", "b"}, {"carol", " spaced pw "}} {
		if err := connectAs(addr, tt.user, tt.pw); err != nil {
			t.Errorf("%s: %v", tt.user, err)
		}
	}

	const secret = "s3cr3t-Value"
	for _, tt := range []struct{ name, content, want string }{
		{"nocolon", "alice " + secret + "\n", "line 2"},
		{"nouser", ":" + secret + "\n", "line 2"},
		{"nosecret", "alice:\n", "line 2"},
		{"dup", "a:" + secret + "\n\na:" + secret + "x\n", `line 4: user "a" listed twice`},
		{"verifier", "a:SCRAM-SHA-256$4096:" + secret + "\n", "line 2: user \"a\": malformed SCRAM-SHA-256 verifier"},
		{"md5", "a:md5" + strings.Repeat("ab", 16) + "\n", "line 2: user \"a\": an MD5 verifier"},
		{"nousers", "\n# nobody\n", "no users"},
	} {
		p := filepath.Join(dir, tt.name)
		if err := os.WriteFile(p, []byte("# c\n"+tt.content), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := LoadCredentialsFile(p)
		if err == nil {
			t.Errorf("%s: accepted", tt.name)
			continue
		}
		if !strings.Contains(err.Error(), p) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: error %q does not name the file and %q", tt.name, err, tt.want)
		}
		if strings.Contains(err.Error(), secret) || strings.Contains(err.Error(), strings.Repeat("ab", 16)) {
			t.Errorf("%s: error reveals the secret: %v", tt.name, err)
		}
	}
	if _, err := LoadCredentialsFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}
