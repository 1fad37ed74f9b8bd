package config

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/switchyard-project/switchyard/internal/binding"
	"github.com/switchyard-project/switchyard/internal/testenv"
)

// The three benchmarks read the same 10,000 bindings. Compare the fast
// path's time with BenchmarkParse10kYAMLOnly's, which runs the YAML parser
// over the whole file; the target is well under 100 ms per parse.

func benchParse(b *testing.B, src string, fast bool) {
	data := []byte(src)
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		c, err := parseBytes(data, "", fast)
		if err != nil {
			b.Fatal(err)
		}
		if len(c.Bindings) != 10000 {
			b.Fatalf("%d bindings", len(c.Bindings))
		}
	}
}

func BenchmarkParse10k(b *testing.B)         { benchParse(b, generate(10000, false), true) }
func BenchmarkParse10kBlock(b *testing.B)    { benchParse(b, generate(10000, true), true) }
func BenchmarkParse10kYAMLOnly(b *testing.B) { benchParse(b, generate(10000, false), false) }

func BenchmarkParseReader10k(b *testing.B) {
	src := generate(10000, false)
	b.SetBytes(int64(len(src)))
	for b.Loop() {
		if _, err := Parse(strings.NewReader(src)); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkMarshal10k(b *testing.B) {
	c, err := Parse(strings.NewReader(generate(10000, false)))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		if _, err := Marshal(c); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDiff10k(b *testing.B) {
	c, err := Parse(strings.NewReader(generate(10000, false)))
	if err != nil {
		b.Fatal(err)
	}
	old := c.Bindings[:9000]
	new := c.Bindings[1000:]
	for b.Loop() {
		a, r := Diff(old, new)
		_ = FormatDiff(a, r)
	}
}

// scaleFile is the file of 1,048,576 bindings that BenchmarkApplyMillion
// (tests/) applies, as Marshal writes it.
func scaleFile(b *testing.B) []byte {
	c := &Config{Version: CurrentVersion, Bindings: make([]binding.Binding, MaxBindings)}
	for i := range c.Bindings {
		c.Bindings[i] = testenv.ScaleBinding(i, 0)
	}
	data, err := Marshal(c)
	if err != nil {
		b.Fatal(err)
	}
	return data
}

// BenchmarkParseMillion is the CLI's first step of apply at the limit:
// Load of the file that BenchmarkApplyMillion (tests/) applies. cpu-ms is
// the process's CPU time per parse, on every CPU, which says more than the
// wall time on a busy machine.
func BenchmarkParseMillion(b *testing.B) {
	file := filepath.Join(b.TempDir(), "million.yaml")
	data := scaleFile(b)
	if err := os.WriteFile(file, data, 0o644); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	data = nil
	b.ReportAllocs()
	cpu := processCPU(b)
	for b.Loop() {
		c, err := Load(file)
		if err != nil {
			b.Fatal(err)
		}
		if len(c.Bindings) != MaxBindings {
			b.Fatalf("%d bindings", len(c.Bindings))
		}
	}
	b.ReportMetric(float64((processCPU(b)-cpu).Milliseconds())/float64(b.N), "cpu-ms/op")
}

// processCPU is the CPU time, user and system, this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
