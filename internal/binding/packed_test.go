package binding

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

// TestPacked: a list reads back as it was written, followed by what came
// after it.
func TestPacked(t *testing.T) {
	for _, l := range []List{nil, {}, listSample(), append(listSample(), Binding{Label: "web", Protocol: UDP, Prefix: netip.MustParsePrefix("::/0"), Ports: Ports{53, 53}})} {
		b := AppendPacked([]byte("head"), l)
		b = append(b, "tail"...)
		got, rest, err := ReadPacked(b[len("head"):])
		if err != nil {
			t.Fatal(err)
		}
		if string(rest) != "tail" {
			t.Errorf("rest %q, want %q", rest, "tail")
		}
		if !reflect.DeepEqual(got, l) {
			t.Errorf("read back %v, want %v", got, l)
		}
	}
	// Labels travel once each: three bindings of one label take the
	// label's bytes once.
	l := List{listSample()[0], listSample()[0], listSample()[0]}
	if b := AppendPacked(nil, l); strings.Count(string(b), "web") != 1 {
		t.Errorf("label written %d times in %q", strings.Count(string(b), "web"), b)
	}
}

// TestPackedSeq: a list encoded from a sequence is the list encoded whole,
// and CutPacked yields it back, stopping its check at the first error.
func TestPackedSeq(t *testing.T) {
	l := append(listSample(), Binding{Label: "dns", Protocol: UDP, Prefix: netip.MustParsePrefix("2001:db8::/64"), Ports: Ports{53, 53}})
	whole := AppendPacked(nil, l)
	seq := AppendPackedSeq(nil, len(l), func(yield func(*Binding) bool) {
		for i := range l {
			if !yield(&l[i]) {
				return
			}
		}
	})
	if string(seq) != string(whole) {
		t.Fatalf("from a sequence %x, whole %x", seq, whole)
	}
	// The first pass sizes the output: it grows once, to its size.
	if cap(seq) != len(seq) {
		t.Errorf("%d bytes written in a buffer of %d", len(seq), cap(seq))
	}
	if string(AppendPackedSeq(nil, -1, nil)) != string(AppendPacked(nil, nil)) {
		t.Errorf("a nil list encodes differently from a sequence")
	}
	p, rest, err := CutPacked(append(whole, "tail"...), nil)
	if err != nil || string(rest) != "tail" || p.Len() != len(l) {
		t.Fatalf("CutPacked: %d bindings, rest %q, err %v", p.Len(), rest, err)
	}
	var got List
	for b := range p.All {
		got = append(got, *b)
	}
	if !reflect.DeepEqual(got, l) {
		t.Errorf("yields %v, want %v", got, l)
	}
	stop := errors.New("stop")
	n := 0
	if _, _, err := CutPacked(whole, func(i int, b *Binding) error {
		if n++; i == 1 {
			return stop
		}
		return nil
	}); err != stop || n != 2 {
		t.Errorf("check stopped after %d bindings with %v, want 2 and its error", n, err)
	}
}

// TestPackedRefuses: malformed input is refused with an error that says
// what is wrong, never a panic or a huge allocation.
func TestPackedRefuses(t *testing.T) {
	good := AppendPacked(nil, listSample())
	// A count over MaxPacked is refused before anything is allocated,
	// even when the input could hold it.
	over := binary.AppendUvarint([]byte{0x00, 0x01}, MaxPacked+1)
	over = append(over, make([]byte, (MaxPacked+1)*packedMinBinding)...)
	for name, c := range map[string]struct {
		in   []byte
		says string
	}{
		"over MaxPacked":  {over, "1048577 bindings, at most 1048576"},
		"labels over":     {append(binary.AppendUvarint(nil, MaxPacked+1), make([]byte, 2*(MaxPacked+1))...), "1048577 labels, at most 1048576"},
		"empty":           {nil, "truncated"},
		"truncated":       {good[:len(good)-1], "truncated"},
		"huge count":      {[]byte{0x00, 0x01, 0xff, 0xff, 0xff, 0xff, 0x0f}, "items announced"},
		"label too long":  {[]byte{0x01, 0x80, 0x02}, "label of 256 bytes"},
		"empty label":     {[]byte{0x01, 0x00, 0x00}, "label of 0 bytes"},
		"unknown label":   {[]byte{0x01, 0x01, 'a', 0x01, 0x01, 0x00, 0x20, 10, 0, 0, 1, 0x05}, "label 5 of 1"},
		"bad kind":        {[]byte{0x01, 0x01, 'a', 0x01, 0x01, 0x10, 0x20, 10, 0, 0, 1, 0x00}, "kind 0x10"},
		"both port kinds": {[]byte{0x01, 0x01, 'a', 0x01, 0x01, 0x0c, 0x20, 10, 0, 0, 1, 0x00}, "kind 0xc"},
		"long prefix":     {[]byte{0x01, 0x01, 'a', 0x01, 0x01, 0x00, 0x21, 10, 0, 0, 1, 0x00}, "prefix length 33"},
		"overlong number": {[]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01}, "overlong"},
	} {
		_, _, err := ReadPacked(c.in)
		if err == nil || !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), c.says) {
			t.Errorf("%s: err %v, want ErrInvalid saying %q", name, err, c.says)
		}
	}
}

// FuzzPacked: ReadPacked never panics; what it accepts writes back to a
// form that reads as the same list, and the bindings that validate print
// as they would from JSON.
func FuzzPacked(f *testing.F) {
	f.Add(AppendPacked(nil, listSample()))
	f.Add(AppendPacked(nil, List{}))
	f.Add([]byte{0x01, 0x01, 'a', 0x01, 0x01, 0x08, 0x20, 10, 0, 0, 1, 0x00, 0x1f, 0x40, 0x23, 0x27})
	f.Fuzz(func(t *testing.T, in []byte) {
		l, rest, err := ReadPacked(in)
		// CutPacked accepts what ReadPacked accepts, and yields the same
		// bindings.
		p, prest, perr := CutPacked(in, nil)
		if (perr == nil) != (err == nil) {
			t.Fatalf("ReadPacked says %v, CutPacked %v", err, perr)
		}
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if len(prest) != len(rest) || p.IsNil() != (l == nil) || p.Len() != len(l) {
			t.Fatalf("CutPacked: %d bindings (nil %v), rest %d; ReadPacked: %d (nil %v), rest %d", p.Len(), p.IsNil(), len(prest), len(l), l == nil, len(rest))
		}
		var cut List
		for b := range p.All {
			cut = append(cut, *b)
		}
		if len(l) > 0 && !reflect.DeepEqual(cut, l) {
			t.Fatalf("CutPacked yields %v, ReadPacked %v", cut, l)
		}
		if len(rest) > len(in) {
			t.Fatalf("rest longer than the input")
		}
		again, rest2, err := ReadPacked(AppendPacked(nil, l))
		if err != nil || len(rest2) != 0 {
			t.Fatalf("written back, %v reads as an error %v (rest %d)", l, err, len(rest2))
		}
		if !reflect.DeepEqual(again, l) {
			t.Fatalf("written back, %v reads as %v", l, again)
		}
		for _, b := range l {
			if b.Validate() != nil {
				continue
			}
			if b.Protocol != TCP && b.Protocol != UDP || (b.Prefix.Addr().Is4() != (b.Prefix.Addr().BitLen() == 32)) {
				t.Fatalf("valid binding %v of protocol %d", b, b.Protocol)
			}
		}
	})
}
