package relay

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
)

// TLSFiles names the PEM files of the relay's server certificate, and the
// CA that client certificates must chain to (optional: without it client
// certificates are not asked for, and the cert method cannot succeed).
type TLSFiles struct {
	CertFile, KeyFile, ClientCAFile string
}

// TLSReloader serves the certificate loaded last: Reload (on SIGHUP) swaps
// it for new connections while established ones keep theirs.
type TLSReloader struct {
	files TLSFiles
	cur   atomic.Pointer[tlsState]
}

type tlsState struct {
	cert     *tls.Certificate
	clientCA *x509.CertPool
}

// NewTLSReloader loads the files once.
func NewTLSReloader(files TLSFiles) (*TLSReloader, error) {
	if files.CertFile == "" || files.KeyFile == "" {
		return nil, errors.New("TLS needs both a certificate and a key file")
	}
	r := &TLSReloader{files: files}
	if err := r.Reload(); err != nil {
		return nil, err
	}
	return r, nil
}

// Reload reads the files again; on error the previous certificate stays.
func (r *TLSReloader) Reload() error {
	cert, err := tls.LoadX509KeyPair(r.files.CertFile, r.files.KeyFile)
	if err != nil {
		return fmt.Errorf("load TLS certificate %s / key %s: %w", r.files.CertFile, r.files.KeyFile, err)
	}
	st := &tlsState{cert: &cert}
	if r.files.ClientCAFile != "" {
		pem, err := os.ReadFile(r.files.ClientCAFile)
		if err != nil {
			return fmt.Errorf("read client CA %s: %w", r.files.ClientCAFile, err)
		}
		st.clientCA = x509.NewCertPool()
		if !st.clientCA.AppendCertsFromPEM(pem) {
			return fmt.Errorf("client CA %s: no PEM certificate in it", r.files.ClientCAFile)
		}
	}
	r.cur.Store(st)
	return nil
}

// Config is the server side TLS configuration for one new connection.
func (r *TLSReloader) Config() *tls.Config {
	st := r.cur.Load()
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS12,
		Certificates: []tls.Certificate{*st.cert},
	}
	if st.clientCA != nil {
		// Verified when given; the cert method requires one.
		cfg.ClientAuth, cfg.ClientCAs = tls.VerifyClientCertIfGiven, st.clientCA
	}
	return cfg
}
