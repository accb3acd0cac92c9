//go:build !race

package walstream

const raceEnabled = false
