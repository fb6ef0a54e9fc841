//go:build race

package server

// raceEnabled: the race detector makes a node's start and shutdown about
// ten times slower, so loops of thousands of them take fewer rounds.
const raceEnabled = true
