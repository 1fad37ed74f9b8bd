package binding

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"reflect"
	"strings"
	"testing"
)

func listSample() List {
	return List{
		{Label: "web", Protocol: TCP, Prefix: netip.MustParsePrefix("192.0.2.0/24"), Ports: Ports{80, 80}},
		{Label: "dns@x.y_z-1", Protocol: UDP, Prefix: netip.MustParsePrefix("2001:db8::/64"), Ports: AnyPort},
		{Label: "web", Protocol: TCP, Prefix: netip.MustParsePrefix("10.0.0.1/32"), Ports: Ports{8000, 8999}},
	}
}

// TestListJSON: List encodes byte for byte as []Binding does, and reads
// back to what it was.
func TestListJSON(t *testing.T) {
	for _, l := range []List{nil, {}, listSample()} {
		got, err := json.Marshal(l)
		if err != nil {
			t.Fatal(err)
		}
		want, err := json.Marshal([]Binding(l))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("List encodes as\n%s\n[]Binding as\n%s", got, want)
		}
		var back List
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(back, l) {
			t.Errorf("%s reads back as %v, want %v", got, back, l)
		}
	}
	if _, err := json.Marshal(List{{Label: "x", Protocol: 7}}); err == nil || !strings.Contains(err.Error(), "protocol 7") {
		t.Errorf("invalid protocol: err %v, want one naming protocol 7", err)
	}
}

// TestListJSONStrict: what the fast reader does not take goes to
// encoding/json, which refuses unknown fields and bad values.
func TestListJSONStrict(t *testing.T) {
	for in, says := range map[string]string{
		`[{"label":"a","protocol":"tcp","prefix":"10.0.0.0/8","ports":"80","extra":1}]`: `unknown field "extra"`,
		`[{"label":"a","protocol":"sctp","prefix":"10.0.0.0/8","ports":"80"}]`:          `protocol "sctp"`,
		`[{"label":"a","protocol":"tcp","prefix":"10.0.0.1","ports":"80"}]`:             `no '/'`,
		`[{"label":"a","protocol":"tcp","prefix":"10.0.0.0/8","ports":"0"}]`:            `port 0 is out of range`,
		`[{"label":"a","protocol":"tcp","prefix":"10.0.0.0/8","ports":"80"},]`:          `invalid character ']'`,
	} {
		var l List
		err := json.Unmarshal([]byte(in), &l)
		if err == nil || !strings.Contains(err.Error(), says) {
			t.Errorf("%s: err %v, want one that says %q", in, err, says)
		}
	}
	// Other spellings of the same list read the same.
	want := List{{Label: "a", Protocol: TCP, Prefix: netip.MustParsePrefix("10.0.0.0/8"), Ports: Ports{80, 80}}}
	for _, in := range []string{
		`[ {"label":"a","protocol":"tcp","prefix":"10.0.0.0/8","ports":"80"} ]`,
		`[{"ports":"80","prefix":"10.0.0.0/8","protocol":"tcp","label":"a"}]`,
		`[{"LABEL":"\u0061","protocol":"tcp","prefix":"10.0.0.0/8","ports":"80"}]`,
	} {
		var l List
		if err := json.Unmarshal([]byte(in), &l); err != nil || !reflect.DeepEqual(l, want) {
			t.Errorf("%s: %v, %v; want %v", in, l, err, want)
		}
	}
}

// FuzzListJSON: the fast reader and encoding/json agree on every input the
// fast reader takes.
func FuzzListJSON(f *testing.F) {
	good, _ := json.Marshal(listSample())
	f.Add(good)
	f.Add([]byte(`[]`))
	f.Add([]byte(`null`))
	f.Add([]byte(`[{"label":"a","protocol":"udp","prefix":"","ports":"1-65535"}]`))
	f.Add([]byte(`[{"label":"a","protocol":"tcp","prefix":"::ffff:1.2.3.4/128","ports":"65535"}]`))
	f.Fuzz(func(t *testing.T, data []byte) {
		fast, ok := decodeCompact(data)
		if !ok {
			return
		}
		var slow []Binding
		dec := json.NewDecoder(bytes.NewReader(data))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&slow); err != nil {
			t.Fatalf("fast reader took %q, encoding/json says %v", data, err)
		}
		if dec.More() {
			t.Fatalf("fast reader took %q with trailing data", data)
		}
		if !reflect.DeepEqual([]Binding(fast), slow) {
			t.Fatalf("%q: fast reader %v, encoding/json %v", data, fast, slow)
		}
	})
}
