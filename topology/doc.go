// Package topology owns the shape of the replication tree: which node
// streams from which. Its state lives in a Raft-replicated finite state
// machine (hashicorp/raft); every change is a Command in the log and bumps
// the tree's epoch, so relays can long-poll for "anything newer than epoch
// N". Liveness (heartbeats) is not in the log: only the state changes it
// causes are.
//
// # Log entries
//
// Each Raft log entry is one JSON-encoded Command: {"op": "...", ...}. The
// ops and their fields are in fsm.go. Snapshots are the JSON encoding of a
// Tree.
//
// The package never imports the data plane (relay, walstream): it deals in
// node names, connection strings and positions as reported to it.
package topology
