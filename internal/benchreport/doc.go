// Package benchreport is the command behind `make bench`: it reads `go test
// -bench` output from several runs, takes the median of each metric, and
// prints one line per figure as `name value unit`, followed by the ratios the
// project tracks, each computed from figures of the same run.
package main
