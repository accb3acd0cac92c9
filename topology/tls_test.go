package topology

import (
	"context"
	"crypto/tls"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/walrelay/walrelay/internal/testcert"
)

// Three managers over TLS: the API is HTTPS, Raft is mutual TLS; a write
// through a follower is forwarded over HTTPS and replicated; a plaintext
// client and a member without a certificate from the CA get nowhere.
func TestManagersOverTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := testcert.NewCA(dir, "ca")
	if err != nil {
		t.Fatal(err)
	}
	start := func(id string, bootstrap bool, join []string, c *testcert.CA) (*Manager, string) {
		crt, key, err := c.Server(id)
		if err != nil {
			t.Fatal(err)
		}
		m, err := NewManager(ManagerConfig{NodeID: id, RaftAddr: freeAddr(t), HTTPAddr: freeAddr(t),
			DataDir: filepath.Join(dir, id), Bootstrap: bootstrap, Join: join,
			TLS: &TLSFiles{CertFile: crt, KeyFile: key, CAFile: c.File}})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- m.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return m, "https://" + m.Addr()
	}
	m1, u1 := start("m1", true, nil, ca)
	_, u2 := start("m2", false, []string{u1}, ca)
	_, u3 := start("m3", false, []string{u1}, ca)
	hc, err := HTTPClientTLS(ca.File)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	c := &Client{URLs: []string{u3, u2, u1}, HTTP: hc}
	eventually(t, "three members over TLS", func() bool {
		tr, err := c.Tree(ctx)
		return err == nil && len(tr.Tree.Managers) == 3 && tr.Leader != ""
	})
	for id, url := range m1.fsm.Tree().Managers {
		if !strings.HasPrefix(url, "https://") {
			t.Errorf("member %s advertised %s, want https", id, url)
		}
	}
	// A write sent to a follower is forwarded to the leader over HTTPS.
	follower := &Client{URLs: []string{u2}, HTTP: hc}
	epoch, err := follower.Apply(ctx, Command{Op: OpRegisterRelay, Name: "r1"})
	if err != nil {
		t.Fatal(err)
	}
	eventually(t, "replicated to every member", func() bool {
		for _, u := range []string{u1, u2, u3} {
			tr, err := (&Client{URLs: []string{u}, HTTP: hc}).Tree(ctx)
			if err != nil || tr.Tree.Epoch < epoch || tr.Tree.Nodes["r1"] == nil {
				return false
			}
		}
		return true
	})
	// Plain HTTP against the TLS API fails.
	if resp, err := http.Get(strings.Replace(u1, "https://", "http://", 1) + "/v1/tree"); err == nil {
		if resp.StatusCode == http.StatusOK {
			t.Error("plain HTTP answered by a TLS manager")
		}
		resp.Body.Close()
	}
	// A member with a certificate from another CA cannot join.
	other, _ := testcert.NewCA(t.TempDir(), "other")
	rogue, _ := start("rogue", false, []string{u1}, other)
	time.Sleep(2 * time.Second)
	if _, ok := m1.fsm.Tree().Managers["rogue"]; ok {
		t.Error("a manager with a certificate from another CA joined")
	}
	_ = rogue

	// SIGHUP's reload: new handshakes get the new certificate.
	served := func() string {
		conn, err := tls.Dial("tcp", strings.TrimPrefix(u1, "https://"), &tls.Config{RootCAs: hc.Transport.(*http.Transport).TLSClientConfig.RootCAs})
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		return conn.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before := served()
	if _, _, err := ca.Server("m1"); err != nil { // same files, new certificate
		t.Fatal(err)
	}
	if err := m1.ReloadTLS(); err != nil {
		t.Fatal(err)
	}
	if after := served(); after == before {
		t.Errorf("the reloaded certificate is not served (serial %s both times)", after)
	}
	if _, err := c.Tree(ctx); err != nil {
		t.Errorf("the cluster after the reload: %v", err)
	}
}
