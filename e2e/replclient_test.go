package e2e

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

// replClient is a replication connection driven message by message, for
// what pgconn cannot run: the COPY IN of UPLOAD_MANIFEST and the CopyOut
// stream of BASE_BACKUP (the Debian client tools of 15 refuse newer servers).
type replClient struct {
	t    testing.TB
	name string
	conn *pgconn.PgConn
}

// replAnswer is a server's answer to one command, as far as comparing
// answers goes: the command tags, or the error.
type replAnswer struct {
	Tags        []string
	Code, Error string
}

// backupResult is what a BASE_BACKUP sent: the entries of base.tar with
// their sizes, and the backup manifest.
type backupResult struct {
	Files    map[string]int64
	Manifest []byte
}

func dialRepl(t testing.TB, conninfo string) *replClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgconn.Connect(ctx, conninfo+" replication=true")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return &replClient{t: t, name: conninfo, conn: conn}
}

// run sends one command and reads its answer up to ReadyForQuery. A COPY IN
// gets copyIn (CopyFail when nil); a BASE_BACKUP stream is collected.
func (c *replClient) run(query string, copyIn []byte) (replAnswer, *backupResult) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	fe := c.conn.Frontend()
	fe.Send(&pgproto3.Query{String: query})
	if err := fe.Flush(); err != nil {
		c.t.Fatalf("%s on %s: %v", query, c.name, err)
	}
	var ans replAnswer
	var backup *backupResult
	var archive, tarData bytes.Buffer
	var inManifest bool
	for {
		msg, err := c.conn.ReceiveMessage(ctx)
		if err != nil {
			c.t.Fatalf("%s on %s: %v", query, c.name, err)
		}
		switch m := msg.(type) {
		case *pgproto3.CommandComplete:
			ans.Tags = append(ans.Tags, string(m.CommandTag))
		case *pgproto3.ErrorResponse:
			ans.Code, ans.Error = m.Code, m.Message
		case *pgproto3.CopyInResponse:
			if copyIn == nil {
				fe.Send(&pgproto3.CopyFail{Message: "walrelay test sends no data"})
			} else {
				for b := copyIn; len(b) > 0; {
					n := min(len(b), 64<<10)
					fe.Send(&pgproto3.CopyData{Data: b[:n]})
					b = b[n:]
				}
				fe.Send(&pgproto3.CopyDone{})
			}
			if err := fe.Flush(); err != nil {
				c.t.Fatal(err)
			}
		case *pgproto3.CopyOutResponse:
			backup = &backupResult{Files: map[string]int64{}}
		case *pgproto3.CopyData:
			// The BASE_BACKUP stream of PostgreSQL 15 on: 'n' starts an
			// archive (its name first), 'd' carries data, 'm' starts the
			// manifest, 'p' reports progress.
			switch m.Data[0] {
			case 'n':
				archive.Reset()
				archive.Write(m.Data[1 : bytes.IndexByte(m.Data[1:], 0)+1])
			case 'm':
				inManifest = true
			case 'd':
				switch {
				case inManifest:
					backup.Manifest = append(backup.Manifest, m.Data[1:]...)
				case archive.String() == "base.tar":
					tarData.Write(m.Data[1:])
				}
			}
		case *pgproto3.ReadyForQuery:
			if backup != nil {
				tr := tar.NewReader(&tarData)
				for {
					h, err := tr.Next()
					if errors.Is(err, io.EOF) {
						break
					}
					if err != nil {
						c.t.Fatalf("%s on %s: base.tar: %v", query, c.name, err)
					}
					backup.Files[h.Name] = h.Size
				}
			}
			return ans, backup
		}
	}
}
