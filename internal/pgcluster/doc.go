// Package pgcluster creates, runs and stops throwaway PostgreSQL clusters for
// the e2e tests and the `walrelay demo` command. It must not import testing.
//
// Everything lives under a base directory the caller owns:
//
//	BaseDir/Name/data        the data directory (initdb or pg_basebackup)
//	BaseDir/Name/server.log  the server log (pg_ctl -l)
//	BaseDir/name/            WAL written by a pg_receivewal (ReceiveWAL)
//	BaseDir/name.log         that pg_receivewal's output
//
// Servers listen on 127.0.0.1 only, on a port picked by FreePort, with
// no Unix-domain socket and trust authentication. Settings go to
// postgresql.auto.conf, appended one per line; later lines win.
//
// initdb and postgres refuse to run as root. When this process is root, every
// PostgreSQL binary runs as the "postgres" user, which owns each cluster's
// directory; the base directory and its parents get o+x so that user can
// reach it. Otherwise the binaries run as the current user.
package pgcluster
