package control

import (
	"bytes"
	"reflect"
	"slices"
	"testing"
)

// fuzzSplit turns fuzz input into datagrams: a, then b if it is not empty.
func fuzzSplit(a, b []byte) [][]byte {
	if len(b) == 0 {
		return [][]byte{a}
	}
	return [][]byte{a, b}
}

// seedTwo adds a message as two fuzz arguments: the first datagram and the
// rest joined, so that chunked seeds exercise the assembler.
func seedTwo(f *testing.F, ds [][]byte, nfds uint8) {
	if len(ds) == 1 {
		f.Add(ds[0], []byte(nil), nfds)
		return
	}
	f.Add(ds[0], ds[1], nfds)
}

// chunked re-encodes a message's payload in datagrams of at most n bytes, so
// that small seeds also cover continuation datagrams.
func chunked(ds [][]byte, n int) [][]byte {
	h, err := parseHeader(ds[0])
	if err != nil || len(ds) != 1 {
		return ds
	}
	fs, _ := framesOf(h.version, h.op, h.flags&flagReply != 0, ds[0][headerLen:], n)
	return joinFrames(fs)
}

// framesOf is frames with a chosen chunk size.
func framesOf(version uint16, op Op, reply bool, p []byte, n int) ([]frame, error) {
	var out []frame
	for i := 0; i == 0 || i < len(p); i += n {
		chunk := p[i:min(i+n, len(p))]
		h := header{version: version, op: op, total: uint32(len(p)), length: uint32(len(chunk))}
		if reply {
			h.flags |= flagReply
		}
		if i+n < len(p) {
			h.flags |= flagMore
		}
		var fr frame
		h.put(fr.hdr[:])
		fr.payload = chunk
		out = append(out, fr)
	}
	return out, nil
}

func FuzzDecodeRequest(f *testing.F) {
	for _, body := range sampleRequests(f) {
		ds, err := EncodeRequest(NewRequest(body))
		if err != nil {
			f.Fatal(err)
		}
		nfds := uint8(0)
		if OpOf(body) == OpRegister {
			nfds = 1
		}
		seedTwo(f, ds, nfds)
		seedTwo(f, chunked(ds, len(ds[0])/2), nfds)
	}
	f.Fuzz(func(t *testing.T, a, b []byte, nfds uint8) {
		ds := fuzzSplit(a, b)
		req, err := DecodeRequest(ds, int(nfds))
		// The daemon keeps Apply's bindings packed: it accepts and
		// refuses the same, and yields the same bindings.
		kept, kerr := decodeKept(ds, int(nfds))
		if (kerr == nil) != (err == nil) {
			t.Fatalf("decoded %v, kept packed %v", err, kerr)
		}
		if kerr != nil {
			if _, ok := kerr.(*Error); !ok {
				t.Fatalf("error of type %T: %v", kerr, kerr)
			}
		}
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if ar, ok := req.Body.(*ApplyRequest); ok {
			kc := kept.Body.(*ApplyRequest).Config
			if got := collect(kc.AllBindings); kc.NumBindings() != len(ar.Config.Bindings) || len(got) != len(ar.Config.Bindings) || (len(got) > 0 && !reflect.DeepEqual(got, ar.Config.Bindings)) {
				t.Fatalf("kept packed: %d bindings %v, decoded %v", kc.NumBindings(), got, ar.Config.Bindings)
			}
		}
		// Whatever is accepted must encode again, and stay the same
		// through another round.
		ds1, err := EncodeRequest(req)
		if err != nil {
			t.Fatalf("accepted request does not encode: %v\n%#v", err, req.Body)
		}
		req2, err := DecodeRequest(ds1, int(nfds))
		if err != nil {
			t.Fatalf("re-encoded request does not decode: %v", err)
		}
		ds2, err := EncodeRequest(req2)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(ds1, ds2, bytes.Equal) {
			t.Fatalf("encoding not stable:\n%q\n%q", ds1, ds2)
		}
	})
}

func FuzzDecodeReply(f *testing.F) {
	reps := sampleReplies(f)
	for _, rep := range reps {
		if rep.Op == OpApply {
			packed := *rep
			packed.Version = PackedVersion
			reps = append(reps, &packed)
			if rep.Body != nil {
				// All of the request's bindings added, in each version.
				for _, v := range []uint16{1, PackedVersion, AddRequestVersion} {
					res := *rep.Body.(*ApplyResponse)
					res.Diff.AddRequest = true
					reps = append(reps, &Reply{Version: v, Op: OpApply, Body: &res})
				}
			}
		}
	}
	for _, rep := range reps {
		ds, err := EncodeReply(rep)
		if err != nil {
			f.Fatal(err)
		}
		seedTwo(f, ds, 0)
		seedTwo(f, chunked(ds, len(ds[0])/2), 0)
	}
	f.Fuzz(func(t *testing.T, a, b []byte, nfds uint8) {
		ds := fuzzSplit(a, b)
		rep, err := DecodeReply(ds, int(nfds))
		if err != nil {
			if _, ok := err.(*Error); !ok {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		if (rep.Err == nil) == (rep.Body == nil) {
			t.Fatalf("reply with error %v and body %v", rep.Err, rep.Body)
		}
		ds1, err := EncodeReply(rep)
		if err != nil {
			t.Fatalf("accepted reply does not encode: %v\n%#v", err, rep)
		}
		rep2, err := DecodeReply(ds1, 0)
		if err != nil {
			t.Fatalf("re-encoded reply does not decode: %v", err)
		}
		ds2, err := EncodeReply(rep2)
		if err != nil {
			t.Fatal(err)
		}
		if !slices.EqualFunc(ds1, ds2, bytes.Equal) {
			t.Fatalf("encoding not stable:\n%q\n%q", ds1, ds2)
		}
	})
}
