package relay

import (
	"encoding/binary"
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/jackc/pgx/v5/pgproto3"

	"github.com/walrelay/walrelay/walstream"
)

// Startup packets as PostgreSQL's postmaster reads them
// (ProcessStartupPacket): a length, then a code that is either a protocol
// version or one of the request codes.
const (
	maxStartupPacketLen = 10000 // MAX_STARTUP_PACKET_LENGTH
	cancelRequestCode   = 80877102
	sslRequestCode      = 80877103
	gssEncRequestCode   = 80877104
)

// readStartupPacket reads one startup-phase packet. A StartupMessage of any
// protocol 3.x comes back with its minor (the caller negotiates); another
// major is refused with PostgreSQL's error.
func readStartupPacket(r io.Reader) (pgproto3.FrontendMessage, uint32, error) {
	var hdr [4]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, 0, err
	}
	n := int(int32(binary.BigEndian.Uint32(hdr[:])))
	if n < 8 || n > maxStartupPacketLen {
		return nil, 0, fatalf("08P01", "invalid length of startup packet")
	}
	body := make([]byte, n-4)
	if _, err := io.ReadFull(r, body); err != nil {
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return nil, 0, err
	}
	code := binary.BigEndian.Uint32(body)
	var msg interface {
		pgproto3.FrontendMessage
		Decode([]byte) error
	}
	switch code {
	case sslRequestCode:
		msg = &pgproto3.SSLRequest{}
	case gssEncRequestCode:
		msg = &pgproto3.GSSEncRequest{}
	case cancelRequestCode:
		// Answered by closing: the relay has no queries to cancel. Protocol
		// 3.2 keys are longer than pgproto3 decodes, and need no decoding.
		return &pgproto3.CancelRequest{}, 0, nil
	default:
		major, minor := code>>16, code&0xffff
		if major != 3 {
			return nil, 0, fatalf("0A000", "unsupported frontend protocol %d.%d: server supports 3.0 to 3.%d", major, minor, latestMinor)
		}
		// Decoded as 3.0: the layout is the same for every 3.x.
		binary.BigEndian.PutUint32(body, pgproto3.ProtocolVersion30)
		sm := &pgproto3.StartupMessage{}
		if err := sm.Decode(body); err != nil {
			return nil, 0, fatalf("08P01", "invalid startup packet layout: %v", err)
		}
		sm.ProtocolVersion = code
		return sm, minor, nil
	}
	if err := msg.Decode(body); err != nil {
		return nil, 0, fatalf("08P01", "invalid startup packet: %v", err)
	}
	return msg, 0, nil
}

// latestMinor is the newest protocol 3.x minor the relay speaks (3.2:
// longer cancel keys, PostgreSQL 18).
const latestMinor = 2

// negotiateProtocol picks the protocol minor as the upstream's major would:
// PostgreSQL 18 speaks 3.2, older ones 3.0. As PostgreSQL does, it sends
// NegotiateProtocolVersion when the client asked for more than that or
// named protocol options (_pq_.*), which the relay knows none of; they are
// removed from the startup parameters.
func (s *session) negotiateProtocol(sm *pgproto3.StartupMessage, minor uint32) error {
	newest := uint32(0)
	if walstream.MajorVersion(s.srv.cfg.Source.ServerVersion()) >= 18 {
		newest = latestMinor
	}
	var unrecognized []string
	for k := range sm.Parameters {
		if strings.HasPrefix(k, "_pq_.") {
			unrecognized = append(unrecognized, k)
			delete(sm.Parameters, k)
		}
	}
	sort.Strings(unrecognized)
	s.protoMinor = min(minor, newest)
	if s.protoMinor == 1 { // 3.1 was never a protocol version
		s.protoMinor = 0
	}
	if minor <= newest && minor != 1 && len(unrecognized) == 0 {
		return nil
	}
	// PostgreSQL sends the whole version (3<<16 | minor) in the field the
	// protocol calls the newest minor, and libpq reads it so.
	s.be.Send(&pgproto3.NegotiateProtocolVersion{NewestMinorProtocol: 3<<16 | s.protoMinor, UnrecognizedOptions: unrecognized})
	if err := s.be.Flush(); err != nil {
		return fmt.Errorf("send NegotiateProtocolVersion: %w", err)
	}
	return nil
}
