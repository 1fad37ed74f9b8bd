package dispatch

import "fmt"

// Counters are what the program counted for one label since the label got
// its id.
type Counters struct {
	// Lookups: connections and datagrams whose most specific binding has
	// this label.
	Lookups uint64 `json:"lookups"`
	// Hits: of those, delivered to the label's socket.
	Hits uint64 `json:"hits"`
	// Missing: refused because the label had no usable socket.
	Missing uint64 `json:"missing_socket"`
	// BadSocket: refused because the kernel would not assign the socket.
	BadSocket uint64 `json:"bad_socket"`
}

func (d *Dispatcher) counters(id uint32) (Counters, error) {
	var per []dispatchSyStats
	if err := d.objs.SyCounters.Lookup(id, &per); err != nil {
		return Counters{}, fmt.Errorf("read counters: %w", err)
	}
	var sum dispatchSyStats
	for _, s := range per {
		sum.Lookups += s.Lookups
		sum.Hits += s.Hits
		sum.Missing += s.Missing
		sum.BadSocket += s.BadSocket
	}
	return countersOf(id, sum), nil
}

// countersOf is what the program counted in s for label id. It counts a
// label's lookups as they end (bpf/dispatch.h, sy_stats), so they are the
// sum of the three ends; what a build before layout 2 counted in lookups
// is the same sum. Label 0 (no binding) counts only its lookups.
func countersOf(id uint32, s dispatchSyStats) Counters {
	c := Counters{Lookups: s.Lookups, Hits: s.Hits, Missing: s.Missing, BadSocket: s.BadSocket}
	if id != 0 {
		c.Lookups = c.Hits + c.Missing + c.BadSocket
	}
	return c
}

// Counters returns the counters of every label, and, as unmatched, the
// number of lookups that matched no binding.
func (d *Dispatcher) Counters() (labels map[string]Counters, unmatched uint64, err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	m, err := d.read()
	if err != nil {
		return nil, 0, err
	}
	labels = make(map[string]Counters, len(m.labels))
	for name, id := range m.labels {
		c, err := d.counters(id)
		if err != nil {
			return nil, 0, err
		}
		labels[name] = c
	}
	u, err := d.counters(0)
	if err != nil {
		return nil, 0, err
	}
	return labels, u.Lookups, nil
}
