package walstream

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// copyConn is the CopyBoth phase of a replication connection, read and
// written by one goroutine. Messages are framed by hand over a bufio.Reader
// so that a WAL message is written to the store straight from the read
// buffer, and so that the writer can see whether more input is already
// buffered: a batch ends, and is fsynced, only when none is.
type copyConn struct {
	nc   net.Conn
	br   *bufio.Reader
	wbuf []byte
	dec  *LinkDecoder // set on a compressed link
}

// readBufSize holds the largest message a walsender sends (MaxSendSize plus
// headers) several times over.
const readBufSize = 1 << 20

func newCopyConn(nc net.Conn) *copyConn {
	return &copyConn{nc: nc, br: bufio.NewReaderSize(nc, readBufSize)}
}

// next returns the next message's type and body, valid until the following
// call. It blocks until deadline; a timeout leaves the stream intact (no
// bytes are consumed until the whole message is buffered).
func (c *copyConn) next(deadline time.Time) (byte, []byte, error) {
	c.nc.SetReadDeadline(deadline)
	hdr, err := c.br.Peek(5)
	if err != nil {
		return 0, nil, err
	}
	n := int(binary.BigEndian.Uint32(hdr[1:]))
	if n < 4 || n+1 > readBufSize {
		return 0, nil, fmt.Errorf("invalid message length %d from upstream", n)
	}
	msg, err := c.br.Peek(1 + n)
	if err != nil {
		return 0, nil, err
	}
	c.br.Discard(1 + n)
	return msg[0], msg[5:], nil
}

// buffered reports whether a whole message is already read: a partial one
// may take a long time to complete on a slow link.
func (c *copyConn) buffered() bool {
	n := c.br.Buffered()
	if n < 5 {
		return false
	}
	hdr, _ := c.br.Peek(5)
	return n >= 1+int(binary.BigEndian.Uint32(hdr[1:]))
}

// send writes one frontend message of type typ.
func (c *copyConn) send(typ byte, body []byte) error {
	c.wbuf = append(c.wbuf[:0], typ)
	c.wbuf = binary.BigEndian.AppendUint32(c.wbuf, uint32(4+len(body)))
	c.wbuf = append(c.wbuf, body...)
	c.nc.SetWriteDeadline(time.Now().Add(30 * time.Second))
	_, err := c.nc.Write(c.wbuf)
	return err
}

func isTimeout(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// startCopy sends START_REPLICATION on an idle, hijacked connection and
// reads up to CopyBothResponse. An ErrorResponse comes back as *pgconn.PgError.
func (c *copyConn) startCopy(ctx context.Context, query string) error {
	if err := c.send('Q', append([]byte(query), 0)); err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	if d, ok := ctx.Deadline(); ok && d.Before(deadline) {
		deadline = d
	}
	var pgErr error
	for {
		typ, body, err := c.next(deadline)
		if err != nil {
			return err
		}
		switch typ {
		case 'W': // CopyBothResponse
			return nil
		case 'E':
			var er pgproto3.ErrorResponse
			if err := er.Decode(body); err != nil {
				return err
			}
			pgErr = pgconn.ErrorResponseToPgError(&er)
		case 'Z':
			if pgErr == nil {
				pgErr = errors.New("server returned ReadyForQuery without starting replication")
			}
			return pgErr
		case 'N', 'S':
		default:
			if pgErr != nil {
				return pgErr
			}
			return fmt.Errorf("unexpected message %q in response to START_REPLICATION", typ)
		}
	}
}
