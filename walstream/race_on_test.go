//go:build race

package walstream

// raceEnabled: the race detector makes the crash test's many file-system
// clones slow; `make test` runs it again without the detector at full count.
const raceEnabled = true
