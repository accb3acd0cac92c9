package topology

import (
	"github.com/walrelay/walrelay/walstream"
)

// RelayReport is what a relay tells the leader with each heartbeat. The
// leader keeps it in memory only: positions change every second and belong
// in no log.
type RelayReport struct {
	Timeline   uint32        `json:"timeline"`
	ReceiveLSN walstream.LSN `json:"receive_lsn"` // durable end
	Upstream   string        `json:"upstream,omitempty"`
	Streaming  bool          `json:"streaming"`
	// Compression is "zstd" while the parent sends compressed WAL;
	// RawBytes and WireBytes count WAL received and what it took on the
	// wire since the relay started.
	Compression string   `json:"compression,omitempty"`
	RawBytes    uint64   `json:"raw_bytes"`
	WireBytes   uint64   `json:"wire_bytes"`
	Slots       []string `json:"slots,omitempty"`
	// Children are the relay's streaming standbys with the positions of
	// their last status reply (the replica feed's second source).
	Children []ChildReport `json:"children,omitempty"`
}

// ChildReport is one child's position as its relay last heard it.
type ChildReport struct {
	Name      string        `json:"name"` // application_name
	WriteLSN  walstream.LSN `json:"write_lsn"`
	FlushLSN  walstream.LSN `json:"flush_lsn"`
	ReplayLSN walstream.LSN `json:"replay_lsn"`
	Timeline  uint32        `json:"timeline,omitempty"`
	// ReplyAgeMs is how old the reply was when the report was made.
	ReplyAgeMs int64 `json:"reply_age_ms"`
}

// ChildEndpoint is where clients reach a managed standby, as registered.
type ChildEndpoint struct {
	Host string `json:"host"`
	Port int    `json:"port"`
	Zone string `json:"zone,omitempty"`
	Tier string `json:"tier,omitempty"`
}

// HeartbeatRequest is POST /v1/heartbeat.
type HeartbeatRequest struct {
	Name   string       `json:"name"`
	Report *RelayReport `json:"report,omitempty"`
}

// SlotWant asks a relay to hold a slot for a managed standby that may be
// moved to it.
type SlotWant struct {
	Name       string        `json:"name"`
	RestartLSN walstream.LSN `json:"restart_lsn"`
	Standby    string        `json:"standby"`
}

// HeartbeatResponse is the leader's answer to a heartbeat.
type HeartbeatResponse struct {
	Epoch uint64     `json:"epoch"`
	Slots []SlotWant `json:"slots,omitempty"`
	// Endpoints of the managed standbys among the relay's children, so the
	// relay's own replica feed can name them.
	Endpoints map[string]ChildEndpoint `json:"endpoints,omitempty"`
}

// NodeStatus is the leader's latest view of one node's positions and link,
// served with the tree. Lag is measured against the primary's current
// position as the leader last read it.
type NodeStatus struct {
	Timeline   uint32        `json:"timeline,omitempty"`
	InRecovery bool          `json:"in_recovery,omitempty"`
	ReceiveLSN walstream.LSN `json:"receive_lsn,omitempty"`
	ReplayLSN  walstream.LSN `json:"replay_lsn,omitempty"`
	// LagBytes is how much WAL the primary has written that the node has
	// not (replayed, for standbys; received, for relays).
	LagBytes *uint64 `json:"lag_bytes,omitempty"`
	// LagSeconds is how long ago the primary first wrote WAL the node does
	// not have yet: 0 when it has everything, however idle the primary.
	// The resolution is the leader's sampling interval (1 s).
	LagSeconds *float64 `json:"lag_seconds,omitempty"`
	// Upstream is where the node actually streams from (host:port).
	Upstream  string `json:"upstream,omitempty"`
	Streaming bool   `json:"streaming"`
	Slot      string `json:"slot,omitempty"`
	// CompressionRatio is raw WAL bytes per byte on the wire of the node's
	// incoming link (relays only); 0 when unknown.
	Compression      string  `json:"compression,omitempty"`
	CompressionRatio float64 `json:"compression_ratio,omitempty"`
	// AgeSeconds is how old these figures are.
	AgeSeconds float64 `json:"age_seconds"`
	Error      string  `json:"error,omitempty"`
}

// StatusResponse is GET /v1/status: every node's status as the leader sees
// it.
type StatusResponse struct {
	Leader     string                `json:"leader"`
	PrimaryLSN walstream.LSN         `json:"primary_lsn,omitempty"`
	Nodes      map[string]NodeStatus `json:"nodes"`
}
