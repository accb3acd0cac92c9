package relay

import (
	"encoding/binary"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/walstream"
)

// startupPacket builds a StartupMessage of protocol major.minor.
func startupPacket(major, minor uint32, params ...string) []byte {
	b := binary.BigEndian.AppendUint32(make([]byte, 4), major<<16|minor)
	for _, p := range params {
		b = append(append(b, p...), 0)
	}
	b = append(b, 0)
	binary.BigEndian.PutUint32(b, uint32(len(b)))
	return b
}

// startupAnswer sends a startup packet and collects the relay's answer up to
// ReadyForQuery or an ErrorResponse.
func startupAnswer(t *testing.T, addr string, packet []byte) []pgproto3.BackendMessage {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := nc.Write(packet); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(nc, nc)
	var got []pgproto3.BackendMessage
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatalf("after %d messages: %v", len(got), err)
		}
		// Receive reuses its message values: keep copies of what is checked.
		switch m := msg.(type) {
		case *pgproto3.NegotiateProtocolVersion:
			got = append(got, &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: m.NewestMinorProtocol, UnrecognizedOptions: slices.Clone(m.UnrecognizedOptions)})
		case *pgproto3.BackendKeyData:
			got = append(got, &pgproto3.BackendKeyData{ProcessID: m.ProcessID, SecretKey: slices.Clone(m.SecretKey)})
		case *pgproto3.ErrorResponse:
			e := *m
			return append(got, &e)
		case *pgproto3.ReadyForQuery:
			return append(got, &pgproto3.ReadyForQuery{TxStatus: m.TxStatus})
		}
	}
}

func negotiated(msgs []pgproto3.BackendMessage) *pgproto3.NegotiateProtocolVersion {
	for _, m := range msgs {
		if n, ok := m.(*pgproto3.NegotiateProtocolVersion); ok {
			return n
		}
	}
	return nil
}

func keyLen(msgs []pgproto3.BackendMessage) int {
	for _, m := range msgs {
		if k, ok := m.(*pgproto3.BackendKeyData); ok {
			return len(k.SecretKey)
		}
	}
	return -1
}

// Protocol versions are negotiated as the upstream's major does: PostgreSQL
// 18 speaks 3.2 (32-byte cancel keys), older majors 3.0; a newer minor or
// protocol options (_pq_.*, of which the relay knows none) get
// NegotiateProtocolVersion (carrying the whole version, as PostgreSQL's
// does); another major gets PostgreSQL's error. e2e checks the same answers
// against each major's real server.
func TestProtocolVersionNegotiation(t *testing.T) {
	user := []string{"user", "postgres", "replication", "true"}
	with := func(extra ...string) []string { return append(slices.Clone(user), extra...) }
	f15 := newFixtureOf(t, "15.18", 3*testSeg, walstream.StoreOptions{TailBytes: 1 << 20})
	f18 := newFixtureOf(t, "18.4", 3*testSeg, walstream.StoreOptions{TailBytes: 1 << 20})
	for _, c := range []struct {
		name       string
		addr       string
		packet     []byte
		negotiate  *pgproto3.NegotiateProtocolVersion // nil: none expected
		keyLen     int
		errMessage string
	}{
		{"3.0 to 15", f15.addr, startupPacket(3, 0, user...), nil, 4, ""},
		{"3.2 to 15", f15.addr, startupPacket(3, 2, user...), &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 3 << 16}, 4, ""},
		{"3.0 with options to 15", f15.addr, startupPacket(3, 0, with("_pq_.b", "1", "_pq_.a", "x")...),
			&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 3 << 16, UnrecognizedOptions: []string{"_pq_.a", "_pq_.b"}}, 4, ""},
		{"3.0 to 18", f18.addr, startupPacket(3, 0, user...), nil, 4, ""},
		{"3.2 to 18", f18.addr, startupPacket(3, 2, user...), nil, 32, ""},
		{"3.9 to 18", f18.addr, startupPacket(3, 9, user...), &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 3<<16 | 2}, 32, ""},
		{"3.1 to 18", f18.addr, startupPacket(3, 1, user...), &pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 3 << 16}, 4, ""},
		{"4.0", f18.addr, startupPacket(4, 0, user...), nil, -1, "unsupported frontend protocol 4.0: server supports 3.0 to 3.2"},
	} {
		t.Run(c.name, func(t *testing.T) {
			msgs := startupAnswer(t, c.addr, c.packet)
			last := msgs[len(msgs)-1]
			if e, ok := last.(*pgproto3.ErrorResponse); ok {
				if e.Message != c.errMessage {
					t.Fatalf("error %q (%s), want %q", e.Message, e.Code, c.errMessage)
				}
				return
			}
			if c.errMessage != "" {
				t.Fatalf("session started, want error %q", c.errMessage)
			}
			n := negotiated(msgs)
			switch {
			case c.negotiate == nil && n != nil:
				t.Errorf("unexpected NegotiateProtocolVersion %+v", n)
			case c.negotiate != nil && n == nil:
				t.Errorf("no NegotiateProtocolVersion, want %+v", c.negotiate)
			case c.negotiate != nil && (n.NewestMinorProtocol != c.negotiate.NewestMinorProtocol ||
				!slices.Equal(n.UnrecognizedOptions, c.negotiate.UnrecognizedOptions)):
				t.Errorf("NegotiateProtocolVersion %+v, want %+v", n, c.negotiate)
			}
			if got := keyLen(msgs); got != c.keyLen {
				t.Errorf("cancel key of %d bytes, want %d", got, c.keyLen)
			}
		})
	}
}
