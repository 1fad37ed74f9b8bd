package dispatch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"structs"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// sy_config, the generation in force and the small sets, is a global of
// the programs (bpf/lookup.h) in a data section of its own: a program reads
// it at an address fixed at load, with no map lookup. The loader replaces
// the section's map with the pinned one (ConfigReplacement), which every
// program of the state shares. Builds before layout 2 kept it as an array
// map of one element with a shorter value, which Open migrates: same
// element, the value zero-extended, the map made mmapable as the loader
// makes data sections.

const (
	// cfgSection is the data section, and its map's name in a spec.
	cfgSection = ".data.sy_config"
	// cfgPin is its pin in a state directory.
	cfgPin = "sy_config"
)

// configVal is struct sy_cfg (bpf/dispatch.h). bpf2go writes the type of a
// global with its nested structs unnamed; this one names them, and load
// checks its size against the object's.
type configVal struct {
	_      structs.HostLayout
	Gen    uint32
	Layout uint32
	Serial uint64
	Dirty  uint32
	Pad    uint32
	Prog   [32]uint8
	Small  [8]dispatchSySmall
}

// cfgMapSpec is the spec of the pinned sy_config map for spec's programs.
func cfgMapSpec(spec *ebpf.CollectionSpec) (*ebpf.MapSpec, error) {
	ms, ok := spec.Maps[cfgSection]
	if !ok {
		return nil, fmt.Errorf("spec has no %s", cfgSection)
	}
	ms = ms.Copy()
	if n := binary.Size(configVal{}); int(ms.ValueSize) != n {
		return nil, fmt.Errorf("%s holds %d bytes, this build's config %d", cfgSection, ms.ValueSize, n)
	}
	// As the loader makes a data section's map, for which it takes a
	// replacement only of the same flags.
	ms.Flags |= unix.BPF_F_MMAPABLE
	ms.Pinning = ebpf.PinNone
	ms.Contents = nil
	return ms, nil
}

// ConfigReplacement sets, in repl, the pinned sy_config of the state in
// dir as the map of spec's sy_config global (see above), for programs that
// look labels up (lookup.h) loaded beside the dispatcher. The caller closes
// the map.
func ConfigReplacement(dir string, spec *ebpf.CollectionSpec, repl map[string]*ebpf.Map) error {
	if _, ok := spec.Maps[cfgSection]; !ok {
		return nil
	}
	m, err := ebpf.LoadPinnedMap(filepath.Join(dir, cfgPin), nil)
	if err != nil {
		return fmt.Errorf("state %s: open config: %w", dir, err)
	}
	repl[cfgSection] = m
	return nil
}

// openConfig opens the pinned sy_config of dir for spec. A map of an older
// layout is copied into a new one, which migrated says must be pinned over
// it once the program that reads it is attached.
func openConfig(dir string, spec *ebpf.CollectionSpec) (m *ebpf.Map, migrated bool, err error) {
	ms, err := cfgMapSpec(spec)
	if err != nil {
		return nil, false, err
	}
	old, err := ebpf.LoadPinnedMap(filepath.Join(dir, cfgPin), nil)
	if err != nil {
		return nil, false, fmt.Errorf("open config: %w", err)
	}
	if ms.Compatible(old) == nil {
		return old, false, nil
	}
	defer old.Close()
	if old.Type() != ebpf.Array || old.KeySize() != 4 || old.MaxEntries() != 1 || old.ValueSize() > ms.ValueSize {
		return nil, false, fmt.Errorf("config map %s (%s, value of %d bytes): %w", cfgPin, old.Type(), old.ValueSize(), ErrIncompatible)
	}
	raw := make([]byte, old.ValueSize())
	if err := old.Lookup(uint32(0), raw); err != nil {
		return nil, false, fmt.Errorf("read config: %w", err)
	}
	m, err = ebpf.NewMap(ms)
	if err != nil {
		return nil, false, fmt.Errorf("make config map: %w", err)
	}
	val := make([]byte, ms.ValueSize)
	copy(val, raw)
	if err := m.Put(uint32(0), val); err != nil {
		m.Close()
		return nil, false, fmt.Errorf("copy config: %w", err)
	}
	return m, true, nil
}

// createConfig makes the config map of a new state, holding cfg, and pins
// it in dir.
func createConfig(dir string, spec *ebpf.CollectionSpec, cfg *configVal) error {
	ms, err := cfgMapSpec(spec)
	if err != nil {
		return err
	}
	m, err := ebpf.NewMap(ms)
	if err != nil {
		return fmt.Errorf("make config map: %w", err)
	}
	defer m.Close()
	if err := m.Put(uint32(0), cfg); err != nil {
		return fmt.Errorf("state init config: %w", err)
	}
	if err := m.Pin(filepath.Join(dir, cfgPin)); err != nil && !errors.Is(err, os.ErrExist) {
		return fmt.Errorf("pin config: %w", err)
	}
	return nil
}
