package relay

import (
	"context"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/walrelay/walrelay/internal/testcert"
	"github.com/walrelay/walrelay/walstream"
)

func newCA(t *testing.T, dir, name string) *testcert.CA {
	t.Helper()
	ca, err := testcert.NewCA(dir, name)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issue(t *testing.T, ca *testcert.CA, name string, server bool) (string, string) {
	t.Helper()
	issueFn := ca.Client
	if server {
		issueFn = ca.Server
	}
	crt, key, err := issueFn(name)
	if err != nil {
		t.Fatal(err)
	}
	return crt, key
}

func TestParseRules(t *testing.T) {
	rules, err := ParseRules("rules", `
# comment
hostssl  bob,carol  10.0.0.0/8   scram-sha-256
host     all        127.0.0.1    trust   # loopback
hostssl  all        all          cert
host     all        all          reject
`)
	if err != nil {
		t.Fatal(err)
	}
	addr := func(ip string) net.Addr { return &net.TCPAddr{IP: net.ParseIP(ip), Port: 1} }
	for _, tt := range []struct {
		user, ip string
		ssl      bool
		want     Method
		line     int
	}{
		{"bob", "10.1.2.3", true, MethodSCRAM, 3},
		{"bob", "10.1.2.3", false, MethodReject, 6}, // hostssl needs TLS
		{"dave", "10.1.2.3", true, MethodCert, 5},
		{"dave", "127.0.0.1", false, MethodTrust, 4},
		{"dave", "192.168.0.1", false, MethodReject, 6},
	} {
		r, ok := rules.Match(tt.user, addr(tt.ip), tt.ssl)
		if !ok || r.Method != tt.want || r.Line != tt.line {
			t.Errorf("Match(%s, %s, ssl=%v) = %s line %d, want %s line %d", tt.user, tt.ip, tt.ssl, r.Method, r.Line, tt.want, tt.line)
		}
	}
	for text, want := range map[string]string{
		"host all all":                       "line 1: want TYPE USERS ADDRESS METHOD",
		"local all all trust":                `line 1: connection type "local"`,
		"host all all md5":                   `line 1: method "md5" is not offered`,
		"host all 10.0.0.0/33 trust":         `line 1: address "10.0.0.0/33"`,
		"\n\nhost all all cert":              "line 3: cert authentication is only available for hostssl",
		"# nothing\n":                        "no rules",
		"host all all trust\nhost all all x": `line 2: method "x"`,
	} {
		if _, err := ParseRules("rules", text); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseRules(%q) = %v, want an error containing %q", text, err, want)
		}
	}
}

// TLS with verify-full, certificate and SCRAM authentication by rule,
// plaintext refused, then rules and certificates replaced live.
func TestTLSAndAccessRules(t *testing.T) {
	dir := t.TempDir()
	ca := newCA(t, dir, "ca")
	crt, key := issue(t, ca, "relay", true)
	aliceCrt, aliceKey := issue(t, ca, "alice", false)
	tlsR, err := NewTLSReloader(TLSFiles{CertFile: crt, KeyFile: key, ClientCAFile: ca.File})
	if err != nil {
		t.Fatal(err)
	}
	rules, err := ParseRules("rules", "hostssl bob all scram-sha-256\nhostssl all 127.0.0.1/32 cert\nhost all all reject\n")
	if err != nil {
		t.Fatal(err)
	}
	creds, _ := NewCredentials(map[string]string{"bob": "secret"})
	f := newFixtureWith(t, 3*testSeg, walstream.StoreOptions{TailBytes: 1 << 20}, func(c *Config) {
		c.TLS, c.Rules, c.Credentials = tlsR, rules, creds
	})
	host, port, _ := net.SplitHostPort(f.addr)
	ctx := context.Background()
	connect := func(params string) (*pgconn.PgConn, error) {
		return pgconn.Connect(ctx, "host="+host+" port="+port+" replication=true "+params)
	}
	root := " sslrootcert=" + ca.File
	alice := " sslcert=" + aliceCrt + " sslkey=" + aliceKey

	conn, err := connect("user=alice sslmode=verify-full" + root + alice)
	if err != nil {
		t.Fatalf("alice with her certificate: %v", err)
	}
	defer conn.Close(ctx)
	if ss := f.srv.Sessions(); len(ss) != 1 || !ss[0].SSL {
		t.Errorf("sessions: %+v, want one over TLS", ss)
	}
	c2, err := connect("user=bob password=secret sslmode=verify-full" + root)
	if err != nil {
		t.Fatalf("bob with SCRAM over TLS: %v", err)
	}
	c2.Close(ctx)
	_, err = connect("user=alice sslmode=verify-full" + root)
	assertPgError(t, err, "28000", "connection requires a valid client certificate")
	_, err = connect("user=carol sslmode=verify-full" + root + alice)
	assertPgError(t, err, "28000", `certificate authentication failed for user "carol"`)
	_, err = connect("user=bob password=secret sslmode=disable")
	assertPgError(t, err, "28000", `access rules reject connection for host "127.0.0.1", user "bob", no encryption`)
	_, err = connect("user=bob password=wrong sslmode=require")
	assertPgError(t, err, "28P01", `password authentication failed for user "bob"`)
	other := newCA(t, t.TempDir(), "other")
	if _, err := connect("user=bob password=secret sslmode=verify-full sslrootcert=" + other.File); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("verify-full against another CA: %v", err)
	}

	// Rules replaced live: plaintext trusted now.
	trust, _ := ParseRules("rules", "host all all trust\n")
	f.srv.SetRules(trust)
	c3, err := connect("user=bob sslmode=disable")
	if err != nil {
		t.Fatalf("after SetRules: %v", err)
	}
	c3.Close(ctx)

	// Certificates replaced live: new connections verify against the new
	// CA; the established one keeps streaming commands.
	crt2, key2 := issue(t, other, "relay2", true)
	os.Rename(crt2, crt)
	os.Rename(key2, key)
	if err := tlsR.Reload(); err != nil {
		t.Fatal(err)
	}
	c4, err := connect("user=bob sslmode=verify-full sslrootcert=" + other.File)
	if err != nil {
		t.Fatalf("verify-full against the reloaded certificate: %v", err)
	}
	c4.Close(ctx)
	if _, err := connect("user=bob sslmode=verify-full" + root); err == nil {
		t.Error("the old CA still verifies after the reload")
	}
	if res := conn.Exec(ctx, "IDENTIFY_SYSTEM"); res != nil {
		if _, err := res.ReadAll(); err != nil {
			t.Errorf("the established TLS session broke with the reload: %v", err)
		}
	}
}

func TestConnectionLimitsAndStartupTimeout(t *testing.T) {
	f := newFixtureWith(t, 3*testSeg, walstream.StoreOptions{TailBytes: 1 << 20}, func(c *Config) {
		c.MaxConnections, c.MaxConnectionsPerUser, c.StartupTimeout = 3, 2, 300*time.Millisecond
	})
	host, port, _ := net.SplitHostPort(f.addr)
	ctx := context.Background()
	connect := func(user string) (*pgconn.PgConn, error) {
		return pgconn.Connect(ctx, "host="+host+" port="+port+" replication=true sslmode=disable user="+user)
	}
	a1, err := connect("a")
	if err != nil {
		t.Fatal(err)
	}
	defer a1.Close(ctx)
	a2, err := connect("a")
	if err != nil {
		t.Fatal(err)
	}
	defer a2.Close(ctx)
	_, err = connect("a")
	assertPgError(t, err, "53300", `too many connections for role "a"`)
	b1, err := connect("b")
	if err != nil {
		t.Fatal(err)
	}
	defer b1.Close(ctx)
	// A refused client holds no place while its error is on the way: the
	// place is free to the next at once (here, again and again).
	held := func() int {
		f.srv.mu.Lock()
		defer f.srv.mu.Unlock()
		return len(f.srv.sessions) - f.srv.refused
	}
	for i := range 20 {
		b1.Close(ctx)
		for held() > 2 { // b1's session winding down
			time.Sleep(time.Millisecond)
		}
		_, err = connect("a")
		assertPgError(t, err, "53300", `too many connections for role "a"`)
		if b1, err = connect("b"); err != nil {
			t.Fatalf("round %d: a place held by a refused client: %v", i, err)
		}
	}
	_, err = connect("c")
	assertPgError(t, err, "53300", "sorry, too many clients already")

	// A connection that never sends its startup packet is cut off, and
	// frees its place.
	b1.Close(ctx)
	nc, err := net.Dial("tcp", f.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	started := time.Now()
	nc.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Read(make([]byte, 1)); err == nil || time.Since(started) > 3*time.Second {
		t.Errorf("silent connection: read %v after %s, want it closed at the startup timeout", err, time.Since(started))
	}
	// The place is free once the session has wound down (just after the
	// close the client saw).
	deadline := time.Now().Add(3 * time.Second)
	for {
		c1, err := connect("c")
		if err == nil {
			c1.Close(ctx)
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a place freed by the timeout: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// The per-child and per-slot metrics are computed at scrape time.
func TestStateMetrics(t *testing.T) {
	reg := prometheus.NewRegistry()
	f := newFixtureWith(t, 3*testSeg, walstream.StoreOptions{TailBytes: 1 << 20}, func(c *Config) { c.Registerer = reg })
	f.appendWAL(t, 64<<10)
	if _, err := f.srv.EnsureSlot("s1_slot", 3*testSeg); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetValue() + "}"
			}
			got[name] = m.GetGauge().GetValue()
		}
	}
	if got["walrelay_slot_retained_bytes{s1_slot}"] != 64<<10 || got["walrelay_slot_active{s1_slot}"] != 0 || got["walrelay_downstream_streaming"] != 0 {
		t.Errorf("metrics: %v", got)
	}
}
