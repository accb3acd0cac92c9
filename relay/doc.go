// Package relay is the walsender-compatible server: it accepts PostgreSQL
// replication connections (standbys, pg_receivewal, other relays), answers
// the replication commands the way a PostgreSQL 15 walsender does, and
// streams WAL from a WALSource to each client at the client's own position.
//
// Each connection is a session owned by one goroutine that does all writes;
// while streaming a second goroutine reads the client's replies. A client
// never receives WAL beyond the source's durable end, and a slow client
// blocks only its own session. Relay-local replication slots are files in
// the slot directory (<name>.json) and pin WAL for retention.
package relay
