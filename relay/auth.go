package relay

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"
	"github.com/xdg-go/scram"
)

const scramMechanism = "SCRAM-SHA-256"

// Credentials is the set of users allowed to connect, as SCRAM-SHA-256
// verifiers: plaintext passwords are turned into verifiers at load and not
// kept.
type Credentials struct {
	users map[string]scram.StoredCredentials
	fake  scram.StoredCredentials // for unknown users
}

// NewCredentials builds credentials from user -> secret, where the secret is
// a password or a PostgreSQL verifier as stored in pg_authid.rolpassword
// ("SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>").
func NewCredentials(users map[string]string) (*Credentials, error) {
	c := &Credentials{users: make(map[string]scram.StoredCredentials, len(users))}
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
	fake, err := storedCredentials(randomString())
	if err != nil {
		return nil, err
	}
	c.fake = fake
	return c, nil
}

func randomString() string {
	var b [18]byte
	rand.Read(b[:])
	return base64.StdEncoding.EncodeToString(b[:])
}

func storedCredentials(secret string) (scram.StoredCredentials, error) {
	if strings.HasPrefix(secret, scramMechanism+"$") {
		return parseVerifier(secret)
	}
	client, err := scram.SHA256.NewClient("", secret, "")
	if err != nil {
		// PostgreSQL falls back to the raw password when SASLprep fails.
		if client, err = scram.SHA256.NewClientUnprepped("", secret, ""); err != nil {
			return scram.StoredCredentials{}, err
		}
	}
	var salt [16]byte
	rand.Read(salt[:])
	return client.GetStoredCredentials(scram.KeyFactors{Salt: string(salt[:]), Iters: 4096}), nil
}

// parseVerifier reads SCRAM-SHA-256$<iter>:<salt>$<StoredKey>:<ServerKey>.
func parseVerifier(v string) (scram.StoredCredentials, error) {
	bad := errors.New("malformed SCRAM-SHA-256 verifier")
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
	if err1 != nil || err2 != nil || err3 != nil || len(stored) != 32 || len(server) != 32 {
		return scram.StoredCredentials{}, bad
	}
	return scram.StoredCredentials{
		KeyFactors: scram.KeyFactors{Salt: string(salt), Iters: iters},
		StoredKey:  stored, ServerKey: server,
	}, nil
}

// LoadCredentialsFile reads "user:secret" lines; blank lines and lines
// starting with # are skipped. Errors name the line, never the secret.
func LoadCredentialsFile(path string) (*Credentials, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("auth file: %w", err)
	}
	defer f.Close()
	users := make(map[string]string)
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		user, secret, ok := strings.Cut(line, ":")
		if !ok || user == "" || secret == "" {
			return nil, fmt.Errorf("auth file %s line %d: want user:password", path, n)
		}
		if _, dup := users[user]; dup {
			return nil, fmt.Errorf("auth file %s line %d: user %q listed twice", path, n, user)
		}
		users[user] = secret
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("auth file %s: %w", path, err)
	}
	c, err := NewCredentials(users)
	if err != nil {
		return nil, fmt.Errorf("auth file %s: %w", path, err)
	}
	return c, nil
}

// Len is the number of users.
func (c *Credentials) Len() int {
	if c == nil {
		return 0
	}
	return len(c.users)
}

func isLoopback(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.TCPAddr:
		return a.IP.IsLoopback()
	case *net.UnixAddr:
		return true
	}
	host, _, err := net.SplitHostPort(addr.String())
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// Authenticate runs the authentication exchange after the StartupMessage.
// On success it has sent AuthenticationOk; on failure it returns a FATAL
// *PGError for the caller to send.
func Authenticate(be *pgproto3.Backend, user string, remote net.Addr, creds *Credentials) error {
	if creds.Len() == 0 {
		if !isLoopback(remote) {
			return fatalf("28000", "no users configured on this relay: only loopback clients are trusted (configure --auth-file)")
		}
		be.Send(&pgproto3.AuthenticationOk{})
		return be.Flush()
	}
	stored, known := creds.users[user]
	if !known {
		// Run the whole exchange so a client cannot tell which users exist.
		stored = creds.fake
	}
	server, err := scram.SHA256.NewServer(func(string) (scram.StoredCredentials, error) {
		// libpq sends an empty SCRAM user name: the startup packet's counts.
		return stored, nil
	})
	if err != nil {
		return err
	}
	failed := fatalf("28P01", "password authentication failed for user \"%s\"", user)
	be.Send(&pgproto3.AuthenticationSASL{AuthMechanisms: []string{scramMechanism}})
	if err := be.Flush(); err != nil {
		return err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASL); err != nil {
		return err
	}
	msg, err := be.Receive()
	if err != nil {
		return fatalf("08P01", "expected SASL response: %v", err)
	}
	first, ok := msg.(*pgproto3.SASLInitialResponse)
	if !ok {
		return fatalf("08P01", "expected SASL response, got %T", msg)
	}
	if first.AuthMechanism != scramMechanism {
		return fatalf("08P01", "client selected an invalid SASL authentication mechanism")
	}
	conv := server.NewConversation()
	s1, err := conv.Step(string(first.Data))
	if err != nil {
		return fatalf("08P01", "malformed SCRAM message: %v", err)
	}
	be.Send(&pgproto3.AuthenticationSASLContinue{Data: []byte(s1)})
	if err := be.Flush(); err != nil {
		return err
	}
	if err := be.SetAuthType(pgproto3.AuthTypeSASLContinue); err != nil {
		return err
	}
	msg, err = be.Receive()
	if err != nil {
		return fatalf("08P01", "expected SASL response: %v", err)
	}
	final, ok := msg.(*pgproto3.SASLResponse)
	if !ok {
		return fatalf("08P01", "expected SASL response, got %T", msg)
	}
	s2, err := conv.Step(string(final.Data))
	if err != nil || !conv.Valid() || !known {
		return failed
	}
	be.Send(&pgproto3.AuthenticationSASLFinal{Data: []byte(s2)})
	be.Send(&pgproto3.AuthenticationOk{})
	return be.Flush()
}
