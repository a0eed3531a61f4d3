//go:build race

package traffic_test

func init() { raceEnabled = true }
