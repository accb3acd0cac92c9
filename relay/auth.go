package relay

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

const (
	scramMechanism = "SCRAM-SHA-256"
	// scramIterations is PostgreSQL's default scram_iterations, used for
	// passwords given in plain text and for the mock exchange.
	scramIterations = 4096
)

// Credentials is the set of users allowed to connect, as SCRAM-SHA-256
// verifiers: passwords given in plain text are turned into verifiers when
// loaded and not kept. It is read-only once built and safe for concurrent use.
type Credentials struct {
	users map[string]scram.StoredCredentials
	// mockKey derives the salt of the mock exchange run for unknown users,
	// the same for one name every time and different between names, as a
	// real user's would be; mockStored and mockServer are its keys.
	mockKey, mockStored, mockServer []byte
}

// NewCredentials builds credentials from user -> secret, where the secret
// is a password or a PostgreSQL verifier as stored in pg_authid.rolpassword:
// "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>" (base64).
// Passwords get a random 16-byte salt and 4096 iterations. Errors name the
// user, never the secret.
func NewCredentials(users map[string]string) (*Credentials, error) {
	c := &Credentials{
		users:      make(map[string]scram.StoredCredentials, len(users)),
		mockKey:    randomBytes(32),
		mockStored: randomBytes(sha256.Size),
		mockServer: randomBytes(sha256.Size),
	}
	for user, secret := range users {
		if user == "" {
			return nil, errors.New("credentials: empty user name")
		}
		sc, err := storedCredentials(secret)
		if err != nil {
			return nil, fmt.Errorf("credentials for user %q: %w", user, err)
		}
		c.users[user] = sc
	}
	return c, nil
}

// Len is the number of users; 0 for nil.
func (c *Credentials) Len() int {
	if c == nil {
		return 0
	}
	return len(c.users)
}

// lookup returns the verifier of user, or a mock one that leads the exchange
// to fail in the same way, with the same number of iterations.
func (c *Credentials) lookup(user string) (scram.StoredCredentials, bool) {
	if sc, ok := c.users[user]; ok {
		return sc, true
	}
	mac := hmac.New(sha256.New, c.mockKey)
	mac.Write([]byte(user))
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(mac.Sum(nil)[:16]), Iters: scramIterations},
		StoredKey:  c.mockStored,
		ServerKey:  c.mockServer,
	}, false
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b) // never fails (crypto/rand since Go 1.24)
	return b
}

var md5Verifier = regexp.MustCompile(`^md5[0-9a-f]{32}$`)

func storedCredentials(secret string) (scram.StoredCredentials, error) {
	if strings.HasPrefix(secret, scramMechanism+"$") {
		return parseVerifier(secret)
	}
	if md5Verifier.MatchString(secret) {
		return scram.StoredCredentials{}, errors.New("an MD5 verifier cannot be used for SCRAM-SHA-256: give the password or a SCRAM-SHA-256 verifier")
	}
	client, err := scram.SHA256.NewClient("", secret, "")
	if err != nil {
		// PostgreSQL uses the raw password when SASLprep rejects it.
		if client, err = scram.SHA256.NewClientUnprepped("", secret, ""); err != nil {
			return scram.StoredCredentials{}, errors.New("unusable password")
		}
	}
	salt := randomBytes(16)
	return client.GetStoredCredentials(scram.KeyFactors{Salt: string(salt), Iters: scramIterations}), nil
}

// parseVerifier reads SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>.
func parseVerifier(v string) (scram.StoredCredentials, error) {
	bad := errors.New("malformed SCRAM-SHA-256 verifier: want SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>")
	rest := strings.TrimPrefix(v, scramMechanism+"$")
	factors, keys, ok := strings.Cut(rest, "$")
	if !ok {
		return scram.StoredCredentials{}, bad
	}
	iterText, saltText, ok1 := strings.Cut(factors, ":")
	storedText, serverText, ok2 := strings.Cut(keys, ":")
	if !ok1 || !ok2 {
		return scram.StoredCredentials{}, bad
	}
	iters, err := strconv.Atoi(iterText)
	if err != nil || iters <= 0 {
		return scram.StoredCredentials{}, bad
	}
	salt, err1 := base64.StdEncoding.DecodeString(saltText)
	stored, err2 := base64.StdEncoding.DecodeString(storedText)
	server, err3 := base64.StdEncoding.DecodeString(serverText)
	if err1 != nil || err2 != nil || err3 != nil || len(salt) == 0 ||
		len(stored) != sha256.Size || len(server) != sha256.Size {
		return scram.StoredCredentials{}, bad
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters},
		StoredKey:  stored,
		ServerKey:  server,
	}, nil
}

// LoadCredentialsFile reads one "user:secret" per line, the secret being a
// password or a SCRAM-SHA-256 verifier (see NewCredentials). The user name
// is trimmed of white space; the secret is everything after the first colon,
// verbatim (only a CRLF line end is removed). Blank lines and lines starting
// with # are skipped; a file without users is an error. Errors name the
// file and the line, never the secret.
func LoadCredentialsFile(path string) (*Credentials, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	defer f.Close()
	c, err := NewCredentials(nil)
	if err != nil {
		return nil, err
	}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSuffix(sc.Text(), "\r")
		if trimmed := strings.TrimSpace(line); trimmed == "" || strings.HasPrefix(trimmed, "#") {
			continue
		}
		user, secret, ok := strings.Cut(line, ":")
		user = strings.TrimSpace(user)
		if !ok || user == "" || secret == "" {
			return nil, fmt.Errorf("auth file %s line %d: want user:password or user:SCRAM-SHA-256$...", path, n)
		}
		if _, dup := c.users[user]; dup {
			return nil, fmt.Errorf("auth file %s line %d: user %q listed twice", path, n, user)
		}
		stored, err := storedCredentials(secret)
		if err != nil {
			return nil, fmt.Errorf("auth file %s line %d: user %q: %w", path, n, user, err)
		}
		c.users[user] = stored
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("auth file %s: %w", path, err)
	}
	if c.Len() == 0 {
		// No users would mean trusting loopback clients: not what a file is for.
		return nil, fmt.Errorf("auth file %s: no users", path)
	}
	return c, nil
}

// isLoopback reports whether a client connected over the loopback interface
// (127.0.0.0/8, ::1) or a Unix socket.
func isLoopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	case nil:
		return false
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Authenticate runs the authentication exchange right after the
// StartupMessage of user was received on be. On success it has sent
// AuthenticationOk (and the SCRAM server-final message before it) and
// returns nil. On failure it sends nothing more and returns a FATAL *PGError
// for the caller to send: 28000 for a non-loopback client when no users are
// configured, 28P01 for a wrong password or an unknown user (after a full
// mock exchange, so the client cannot tell which), 08P01 for a protocol
// violation. If the client goes away (libpq does, to prompt for a password)
// or the connection fails, the error is not a *PGError and wraps io.EOF or
// the I/O error: there is nobody to answer.
//
// With no users (creds nil or empty) loopback clients are trusted; otherwise
// everyone uses SCRAM-SHA-256 (the default when no access rules are set).
// The user name is the startup packet's: libpq sends an empty one in SCRAM.
// Channel binding is not offered.
func Authenticate(be *pgproto3.Backend, user string, remote net.Addr, creds *Credentials) error {
	switch defaultMethod(creds, remote) {
	case MethodTrust:
		be.Send(&pgproto3.AuthenticationOk{})
		return be.Flush()
	case MethodReject:
		return fatalf("28000", "no users configured on this relay: only loopback clients are trusted (configure --auth-file)")
	}
	return authenticateSCRAM(be, user, creds)
}

// authenticateSCRAM runs the SCRAM-SHA-256 exchange; a user without a
// verifier (or a relay without users) fails it like a wrong password.
func authenticateSCRAM(be *pgproto3.Backend, user string, creds *Credentials) error {
	if creds == nil {
		var err error
		if creds, err = NewCredentials(nil); err != nil {
			return err
		}
	}
	stored, known := creds.lookup(user)
	server, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) {
		return stored, nil
	})
	if err != nil {
		return fmt.Errorf("scram server: %w", err)
	}
	conv := server.NewConversation()

	be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}})
	first, err := receiveSASL[*pgproto3.SASLInitialResponse](be, pgproto3.AuthTypeSASL)
	if err != nil {
		return err
	}
	if first.AuthMechanism != scramMechanism {
		return fatalf("08P01", "client selected an invalid SASL authentication mechanism")
	}
	serverFirst, err := conv.Step(string(first.Data))
	if err != nil {
		pe := fatalf("08P01", "malformed SCRAM message")
		pe.Detail = err.Error()
		return pe
	}
	if conv.AuthzID() != "" {
		return fatalf("0A000", "client uses authorization identity, but it is not supported")
	}

	be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(serverFirst)})
	final, err := receiveSASL[*pgproto3.SASLResponse](be, pgproto3.AuthTypeSASLContinue)
	if err != nil {
		return err
	}
	serverFinal, err := conv.Step(string(final.Data))
	if err != nil || !conv.Valid() || !known {
		return fatalf("28P01", "password authentication failed for user \"%s\"", user)
	}
	be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte(serverFinal)})
	be.Send(&pgproto3.AuthenticationOk{})
	return be.Flush()
}

// receiveSASL flushes what was sent and receives the client's answer, a 'p'
// message that pgproto3 decodes as T only when told the authentication type.
func receiveSASL[T pgproto3.FrontendMessage](be *pgproto3.Backend, authType uint32) (T, error) {
	var zero T
	if err := be.Flush(); err != nil {
		return zero, fmt.Errorf("authentication: %w", err)
	}
	if err := be.SetAuthType(authType); err != nil {
		return zero, err
	}
	msg, err := be.Receive()
	var ne net.Error
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		return zero, fmt.Errorf("client closed the connection during authentication: %w", io.EOF)
	case errors.As(err, &ne):
		return zero, fmt.Errorf("authentication: %w", err)
	case err != nil:
		return zero, fatalf("08P01", "invalid frontend message: %v", err)
	}
	if _, bye := msg.(*pgproto3.Terminate); bye {
		return zero, fmt.Errorf("client ended the connection during authentication: %w", io.EOF)
	}
	m, ok := msg.(T)
	if !ok {
		return zero, fatalf("08P01", "expected SASL response, got message type %d", messageType(msg))
	}
	return m, nil
}

// messageType is the type byte of a frontend message.
func messageType(msg pgproto3.FrontendMessage) byte {
	b, err := msg.Encode(nil)
	if err != nil || len(b) == 0 {
		return 0
	}
	return b[0]
}
