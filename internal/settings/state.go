package settings

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"slices"

	"github.com/switchyard-project/switchyard/internal/binding"
)

// ErrBadState says that recorded label settings cannot be read.
var ErrBadState = errors.New("bad recorded label settings")

// EncodeState is the state form of label settings by name: what the
// daemon records with the bindings and mirrors to its settings file.
func EncodeState(m map[string]Label) ([]byte, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("encode label settings: %w", err)
	}
	return b, nil
}

// EncodeStateIndent is EncodeState indented, for the settings file.
func EncodeStateIndent(m map[string]Label) ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode label settings: %w", err)
	}
	return b, nil
}

// legacyLabel is the state form read field by field, to tell an upstream
// that older builds accepted and ParseUpstream refuses from other damage.
type legacyLabel struct {
	Grants   Grants  `json:"grants"`
	Policy   *string `json:"policy"`
	Upstream *string `json:"upstream"`
	Engine   *string `json:"engine"`
}

// DecodeState reads label settings in the state form (EncodeState), as
// this build and every earlier one wrote them, refusing with ErrBadState
// what no daemon would have written.
//
// Builds up to 4362dae checked a splice upstream's host more loosely than
// ParseUpstream ("bad!host:80", "a..b:80", "-x:80" passed). Such a host
// could never be dialled, so its splice never carried a byte: DecodeState
// keeps the label's grants, sets its policy to none and says so in a
// note, one per label, rather than refuse the whole state and with it the
// start of the daemon.
func DecodeState(b []byte) (m map[string]Label, notes []string, err error) {
	raw := map[string]*legacyLabel{}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrBadState, err)
	}
	m = make(map[string]Label, len(raw))
	for _, name := range slices.Sorted(maps.Keys(raw)) {
		r := raw[name]
		if err := binding.ValidateLabel(name); err != nil {
			return nil, nil, fmt.Errorf("%w: %w", ErrBadState, err)
		}
		if r == nil {
			return nil, nil, fmt.Errorf("%w: label %s has none", ErrBadState, name)
		}
		l := Label{Grants: r.Grants}
		if err := l.Grants.Validate(); err != nil {
			return nil, nil, fmt.Errorf("%w: label %s: %w", ErrBadState, name, err)
		}
		kind, upstream, engine := "none", "", ""
		if r.Policy != nil {
			kind = *r.Policy
		}
		if r.Upstream != nil {
			upstream = *r.Upstream
			if upstream == "" {
				return nil, nil, fmt.Errorf("%w: label %s: empty upstream", ErrBadState, name)
			}
		}
		if r.Engine != nil {
			engine = *r.Engine
			if engine == "" {
				return nil, nil, fmt.Errorf("%w: label %s: empty engine", ErrBadState, name)
			}
		}
		p, err := ParsePolicy(kind, upstream, engine)
		if err != nil && kind == "splice" && engine == "" && looseUpstream(upstream) {
			notes = append(notes, fmt.Sprintf("label %s: policy splice to %q dropped to none: %v; its host could never be dialled; set the policy again with a valid upstream", name, upstream, err))
			p, err = Policy{}, nil
		}
		if err != nil {
			return nil, nil, fmt.Errorf("%w: label %s: %w", ErrBadState, name, err)
		}
		l.Policy = p
		m[name] = l
	}
	return m, notes, nil
}

// looseUpstream reports whether s passes the upstream check of builds up
// to 4362dae: host:port or host:same with a non-empty host of printable
// ASCII, at most 512 bytes.
func looseUpstream(s string) bool {
	if s == "" || len(s) > 512 {
		return false
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil || host == "" {
		return false
	}
	for i := 0; i < len(host); i++ {
		if c := host[i]; c <= ' ' || c >= 0x7f {
			return false
		}
	}
	if port == SamePortWord {
		return true
	}
	_, err = ParseUpstream("127.0.0.1:" + port)
	return err == nil
}
