package topology

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
)

// TLSFiles turns on TLS for a manager: its API is served over HTTPS, and
// Raft traffic between members is mutual TLS (each member presents its
// certificate and verifies the other's against CAFile).
type TLSFiles struct {
	CertFile, KeyFile, CAFile string
}

type managerTLS struct {
	files  TLSFiles
	cert   atomic.Pointer[tls.Certificate]
	server *tls.Config // API and Raft listeners
	client *tls.Config // Raft dials, forwarding, joining
}

func loadManagerTLS(f TLSFiles) (*managerTLS, error) {
	if f.CertFile == "" || f.KeyFile == "" || f.CAFile == "" {
		return nil, errors.New("manager TLS needs a certificate, a key and a CA file")
	}
	pool, err := LoadCAPool(f.CAFile)
	if err != nil {
		return nil, err
	}
	t := &managerTLS{files: f}
	if err := t.reload(); err != nil {
		return nil, err
	}
	// The certificate is looked up per handshake, so a reload reaches new
	// connections while established ones go on.
	getCert := func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return t.cert.Load(), nil }
	getClientCert := func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return t.cert.Load(), nil }
	t.server = &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: getCert,
		ClientCAs: pool, ClientAuth: tls.VerifyClientCertIfGiven}
	t.client = &tls.Config{MinVersion: tls.VersionTLS12, GetClientCertificate: getClientCert, RootCAs: pool}
	return t, nil
}

func (t *managerTLS) reload() error {
	cert, err := tls.LoadX509KeyPair(t.files.CertFile, t.files.KeyFile)
	if err != nil {
		return fmt.Errorf("manager TLS certificate: %w", err)
	}
	t.cert.Store(&cert)
	return nil
}

// ReloadTLS reads the manager's certificate and key again (SIGHUP); on
// error the previous ones stay.
func (m *Manager) ReloadTLS() error {
	if m.tls == nil {
		return nil
	}
	return m.tls.reload()
}

// LoadCAPool reads a PEM bundle of CA certificates.
func LoadCAPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("CA file %s: no PEM certificate in it", path)
	}
	return pool, nil
}

// HTTPClientTLS is an HTTP client for manager URLs that verifies the
// managers' certificates against caFile ("": the system roots).
func HTTPClientTLS(caFile string) (*http.Client, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile != "" {
		pool, err := LoadCAPool(caFile)
		if err != nil {
			return nil, err
		}
		cfg.RootCAs = pool
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.TLSClientConfig = cfg
	return &http.Client{Timeout: 40 * time.Second, Transport: tr}, nil
}

// raftTLSLayer is Raft's stream layer over mutual TLS: a member that cannot
// show a certificate from the CA cannot join the conversation.
type raftTLSLayer struct {
	net.Listener
	advertise net.Addr
	client    *tls.Config
}

var _ raft.StreamLayer = (*raftTLSLayer)(nil)

func newRaftTLSLayer(bind string, advertise net.Addr, t *managerTLS) (*raftTLSLayer, error) {
	server := t.server.Clone()
	server.ClientAuth = tls.RequireAndVerifyClientCert
	ln, err := tls.Listen("tcp", bind, server)
	if err != nil {
		return nil, err
	}
	return &raftTLSLayer{Listener: ln, advertise: advertise, client: t.client}, nil
}

func (l *raftTLSLayer) Addr() net.Addr { return l.advertise }

func (l *raftTLSLayer) Dial(addr raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	host, _, err := net.SplitHostPort(string(addr))
	if err != nil {
		return nil, err
	}
	cfg := l.client.Clone()
	cfg.ServerName = host
	return tls.DialWithDialer(&net.Dialer{Timeout: timeout}, "tcp", string(addr), cfg)
}
