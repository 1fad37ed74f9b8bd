package config

import (
	"strings"
	"testing"
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
