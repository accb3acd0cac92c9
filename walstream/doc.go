// Package walstream owns WAL as bytes and positions: LSNs and segment
// naming, the on-disk segment store, the replication protocol's CopyData
// payloads, and the upstream client that feeds the store from a parent.
//
// # Store layout
//
//	DIR/identity.json                         system id, segment size, server_version
//	DIR/wal/TTTTTTTTXXXXXXXXYYYYYYYY          a complete segment, byte-identical to pg_wal
//	DIR/wal/TTTTTTTTXXXXXXXXYYYYYYYY.partial  the one segment being written, and
//	                                          the next one's file, all zeros (spare.go)
//	DIR/wal/TTTTTTTTXXXXXXXXYYYYYYYY.wz       a complete segment, compressed (zsegment.go)
//	DIR/wal/NNNNNNNN.history                  timeline history files, byte-identical
//
// File names are PostgreSQL's (XLogFileName). A segment is written from its
// first byte; the store never has holes. Writes go to the .partial file and
// become visible to readers only after fsync (Sync publishes the durable
// end); a full segment is fsynced and renamed to its final name, the rename
// made durable by the next directory fsync (until then recovery finds the
// full .partial and completes it). The next segment's file is zero-filled
// under its own name, and that name fsynced, before the writer needs it. On
// open, temp files and all-zero .partial files that follow a held segment
// are removed, and each remaining .partial is
// validated record by record as PostgreSQL's recovery reads WAL (page
// headers, record lengths across pages, xl_prev, CRC-32C; walrecord.go) and
// cut after its last whole record: a power loss may leave the unsynced tail
// zeroed, stale or torn inside a page. What remains is fsynced and is the
// durable end the upstream client resumes from. Segments are keyed by (timeline, segment number): after a
// timeline switch the new timeline's copy of the switch segment is a file of
// its own, and an old timeline's last segment may stay .partial.
//
// Completed segments may be rewritten as *.wz files of independent zstd
// frames with a CRC-32C each (RunCompactor); a frame that fails its check is
// reported as a CorruptError and never returned.
//
// # Concurrency
//
// One writer (the upstream client) calls Write, Sync and StartAt; any number
// of readers call ReadAt, DurableEnd and Wait. The newest segments are also
// held in memory so readers at the tip do not touch files.
package walstream
