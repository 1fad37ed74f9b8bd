package config

import (
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// readerProblem refuses what the YAML parser's reader refuses, in its
// words: every byte after "#" alone, every pair, and the three- and
// four-byte sequences around each boundary of UTF-8, each at the end of a
// comment where nothing else can go wrong.
func TestReaderProblemIsYAMLs(t *testing.T) {
	t.Parallel()
	var inputs []string
	for b0 := range 256 {
		inputs = append(inputs, string([]byte{byte(b0)}))
		for b1 := range 256 {
			inputs = append(inputs, string([]byte{byte(b0), byte(b1)}))
		}
	}
	tails := []byte{0x41, 0x7f, 0x80, 0x9f, 0xa0, 0xbf, 0xc0}
	for b0 := 0xe0; b0 <= 0xf7; b0++ {
		for b1 := 0x7f; b1 <= 0xc0; b1++ {
			for _, b2 := range tails {
				inputs = append(inputs, string([]byte{byte(b0), byte(b1), b2}))
				for _, b3 := range tails {
					inputs = append(inputs, string([]byte{byte(b0), byte(b1), b2, b3}))
				}
			}
		}
	}
	refused := 0
	for _, in := range inputs {
		if strings.ContainsAny(in, "\n\r") {
			continue
		}
		data := []byte("version: 1\n# " + in + "\n")
		want := ""
		var n yaml.Node
		if err := yaml.Unmarshal(data, &n); err != nil {
			want = strings.TrimPrefix(err.Error(), "yaml: ")
			refused++
		}
		if got := readerProblem(data); got != want {
			t.Errorf("%q: readerProblem says %q, the YAML parser %q", in, got, want)
		}
	}
	if refused == 0 {
		t.Fatal("the YAML parser refused none of the inputs")
	}
}

// A character that the YAML parser's reader refuses, after a syntax error,
// gives the same error through the scanner and through the YAML parser
// alone, wherever the reader's blocks of 512 bytes fall in the text with
// the bindings and without them.
func TestBadByteAfterSyntaxError(t *testing.T) {
	t.Parallel()
	list := generate(8, false)
	list = list[:strings.Index(list, "labels:")]
	for pad := range 700 {
		src := list + "labels:\n  a:\n    grants: {uids: M953], gids: []}\n" + strings.Repeat("#", pad) + "\n  b:\n  \x13 policy: none\n"
		_, fast := parseBytes([]byte(src), "", true)
		_, slow := parseBytes([]byte(src), "", false)
		if fast == nil || slow == nil || fast.Error() != slow.Error() {
			t.Fatalf("pad %d: fast path %v, YAML only %v", pad, fast, slow)
		}
		if want := "yaml syntax error: control characters are not allowed"; fast.Error() != want {
			t.Fatalf("pad %d: %v, want %q", pad, fast, want)
		}
	}
}
