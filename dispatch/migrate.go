package dispatch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"

	"github.com/cilium/ebpf"
)

// Pinned maps whose layout differs from this build's (a value that grew, a
// different capacity) are migrated when the state is opened: a new map is
// made to this build's spec, the entries are copied (values zero-extended),
// the program is loaded against it, swapped in with one link update, and the
// new map is pinned over the old one. Sockets cannot be copied from user
// space, so a changed sockmap is refused, as is any key change or shrinking
// value, with ErrIncompatible. Counters incremented between the copy and the
// swap are lost; bindings cannot change meanwhile, as the state lock is held.
// A map of derived data (rebuilt) is not copied: the new map starts empty,
// which the program reads as saying nothing, and Open rebuilds it.

// rebuilt names the maps whose entries are derived from others and which
// Open rebuilds when it finds them empty: the prefix index (index.go).
var rebuilt = map[string]bool{"sy_index": true}

// incompatible lists the pinned maps that do not fit spec.
func incompatible(dir string, spec *ebpf.CollectionSpec) (map[string]*ebpf.Map, error) {
	old := map[string]*ebpf.Map{}
	for name, ms := range spec.Maps {
		if ms.Pinning != ebpf.PinByName {
			continue
		}
		m, err := ebpf.LoadPinnedMap(filepath.Join(dir, name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue // a new map: loading creates it
		}
		if err != nil {
			closeAll(old)
			return nil, fmt.Errorf("open pinned map %s: %w", name, err)
		}
		if m.Type() == ms.Type && m.KeySize() == ms.KeySize && m.ValueSize() == ms.ValueSize &&
			m.MaxEntries() == ms.MaxEntries && m.Flags() == ms.Flags {
			m.Close()
			continue
		}
		old[name] = m
	}
	return old, nil
}

func closeAll(ms map[string]*ebpf.Map) {
	for _, m := range ms {
		m.Close()
	}
}

// migrateMaps makes a map of this build's layout for each map in old and
// copies the entries over.
func migrateMaps(spec *ebpf.CollectionSpec, old map[string]*ebpf.Map) (map[string]*ebpf.Map, error) {
	fresh := map[string]*ebpf.Map{}
	fail := func(err error) (map[string]*ebpf.Map, error) {
		closeAll(fresh)
		return nil, err
	}
	for name, om := range old {
		ms := spec.Maps[name].Copy()
		ms.Pinning = ebpf.PinNone
		switch {
		case om.Type() != ms.Type:
			return fail(fmt.Errorf("map %s changed type from %s to %s: %w", name, om.Type(), ms.Type, ErrIncompatible))
		case om.KeySize() != ms.KeySize:
			return fail(fmt.Errorf("map %s changed key size: %w", name, ErrIncompatible))
		case om.ValueSize() > ms.ValueSize && !rebuilt[name]:
			return fail(fmt.Errorf("map %s has smaller values in this build: %w", name, ErrIncompatible))
		case ms.Type == ebpf.SockMap || ms.Type == ebpf.SockHash:
			return fail(fmt.Errorf("map %s holds sockets, which cannot be copied: %w; register the sockets again after removing the state", name, ErrIncompatible))
		case ms.Type == ebpf.SkStorage:
			return fail(fmt.Errorf("map %s is socket storage, which cannot be copied: %w", name, ErrIncompatible))
		}
		nm, err := ebpf.NewMap(ms)
		if err != nil {
			return fail(fmt.Errorf("create map %s: %w", name, err))
		}
		fresh[name] = nm
		if rebuilt[name] {
			continue
		}
		if err := copyEntries(om, nm, ms); err != nil {
			return fail(fmt.Errorf("migrate map %s: %w", name, err))
		}
	}
	return fresh, nil
}

func copyEntries(from, to *ebpf.Map, ms *ebpf.MapSpec) error {
	perCPU := ms.Type == ebpf.PerCPUArray || ms.Type == ebpf.PerCPUHash || ms.Type == ebpf.LRUCPUHash
	key := make([]byte, from.KeySize())
	// Values are fixed-size byte arrays of the old size, read into the
	// start of arrays of the new size: the rest stays zero.
	oldT := reflect.ArrayOf(int(from.ValueSize()), reflect.TypeFor[byte]())
	newT := reflect.ArrayOf(int(ms.ValueSize), reflect.TypeFor[byte]())
	var val, out reflect.Value
	if perCPU {
		val = reflect.New(reflect.SliceOf(oldT))
	} else {
		val = reflect.New(oldT)
	}
	it := from.Iterate()
	for it.Next(&key, val.Interface()) {
		if perCPU {
			src := val.Elem()
			out = reflect.MakeSlice(reflect.SliceOf(newT), src.Len(), src.Len())
			for i := range src.Len() {
				reflect.Copy(out.Index(i), src.Index(i))
			}
			if err := to.Put(key, out.Interface()); err != nil {
				return err
			}
			continue
		}
		out = reflect.New(newT).Elem()
		reflect.Copy(out, val.Elem())
		if err := to.Put(key, out.Addr().Interface()); err != nil {
			return err
		}
	}
	return it.Err()
}

// MigratePinned brings the maps of spec that are pinned by name in dir to
// spec's layout, the way Open does for the dispatcher's own maps, for
// packages that keep maps beside them. Each migrated map is pinned over the
// old one at once, so programs loaded against dir afterwards use it; until
// they replace the programs running, those update the old maps, so
// counters may miss that moment. It returns the names of the maps migrated.
func MigratePinned(dir string, spec *ebpf.CollectionSpec) ([]string, error) {
	old, err := incompatible(dir, spec)
	if err != nil {
		return nil, err
	}
	defer closeAll(old)
	fresh, err := migrateMaps(spec, old)
	if err != nil {
		return nil, fmt.Errorf("state %s: %w", dir, err)
	}
	defer closeAll(fresh)
	if err := repin(dir, fresh); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(fresh))
	for name := range fresh {
		names = append(names, name)
	}
	slices.Sort(names)
	return names, nil
}

// repin pins each migrated map over the old map's pin, atomically.
func repin(dir string, fresh map[string]*ebpf.Map) error {
	for name, m := range fresh {
		tmp := filepath.Join(dir, name+"_new")
		os.Remove(tmp)
		if err := m.Pin(tmp); err != nil {
			return fmt.Errorf("pin migrated map %s: %w", name, err)
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			return fmt.Errorf("pin migrated map %s: %w", name, err)
		}
	}
	return nil
}
