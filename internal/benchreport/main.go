package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// ratio is a figure the project tracks: num/den of one unit.
type ratio struct {
	name, num, den, unit string
}

var ratios = []ratio{
	{"lookup_cli_host_vs_none", "LookupCLI/host-delivered", "LookupCLI/none-kernel", "ms/lookup"},
	{"lookup_cli_range_vs_none", "LookupCLI/range-refused", "LookupCLI/none-kernel", "ms/lookup"},
	{"lookup_100k_vs_1", "Lookup/net24-any/100000/hit", "Lookup/net24-any/1/hit", "ns/lookup"},
	{"lookup_100k_vs_1_host", "Lookup/host32-port/100000/hit", "Lookup/host32-port/1/hit", "ns/lookup"},
	{"lookup_100k_vs_1_range", "Lookup/net24-range/100000/hit", "Lookup/net24-range/1/hit", "ns/lookup"},
	{"status_p50_flood_vs_idle", "StatusUnderListingFlood/flood", "StatusUnderListingFlood/idle", "ms-p50"},
	{"status_p99_flood_vs_idle", "StatusUnderListingFlood/flood", "StatusUnderListingFlood/idle", "ms-p99"},
}

// Units of the lookup benchmark's leaves (Lookup/SHAPE/N/CASE), measured in
// turns in one process: switchyard, the peer design, the empty program.
const (
	unitLookup    = "ns/lookup"
	unitPeer      = "peer-ns/lookup"
	unitEmpty     = "empty-ns/lookup"
	unitFloor     = "floor-ns/lookup"
	unitNA        = "not-applicable"
	unitMemlock   = "MiB-memlock"
	unitPeerLock  = "peer-MiB-memlock"
	lookupPrefix  = "Lookup/"
	memlockSuffix = "/memlock"
)

func main() {
	if err := run(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "benchreport:", err)
		os.Exit(1)
	}
}

func run(in io.Reader, out io.Writer) error {
	samples := map[string]map[string][]float64{} // name -> unit -> values
	var order []string
	sc := bufio.NewScanner(in)
	for sc.Scan() {
		name, metrics, ok := parseLine(sc.Text())
		if !ok {
			continue
		}
		if samples[name] == nil {
			samples[name] = map[string][]float64{}
			order = append(order, name)
		}
		for unit, v := range metrics {
			samples[name][unit] = append(samples[name][unit], v)
		}
	}
	if err := sc.Err(); err != nil {
		return err
	}
	if len(order) == 0 {
		return fmt.Errorf("no benchmark results on input")
	}
	med := func(name, unit string) (float64, int, bool) {
		vs := samples[name][unit]
		if len(vs) == 0 {
			return 0, 0, false
		}
		s := slices.Clone(vs)
		slices.Sort(s)
		n := len(s)
		if n%2 == 1 {
			return s[n/2], n, true
		}
		return (s[n/2-1] + s[n/2]) / 2, n, true
	}
	runs := 0
	for _, name := range order {
		if strings.HasPrefix(name, lookupPrefix) {
			continue // printed below
		}
		units := make([]string, 0, len(samples[name]))
		for u := range samples[name] {
			units = append(units, u)
		}
		slices.Sort(units)
		for _, u := range units {
			v, n, _ := med(name, u)
			if n != runs {
				runs = n
				fmt.Fprintf(out, "# medians of %d runs\n", n)
			}
			fmt.Fprintf(out, "%s %s %s\n", name, strconv.FormatFloat(v, 'g', 4, 64), u)
		}
	}
	printLookups(out, order, med)
	saidTargets := false
	for _, r := range ratios {
		a, _, ok1 := med(r.num, r.unit)
		b, _, ok2 := med(r.den, r.unit)
		if !ok1 || !ok2 || b == 0 {
			continue
		}
		if !saidTargets {
			saidTargets = true
			fmt.Fprintln(out, "# ratios of medians from the same run; target: lookup_100k_vs_1 <= 1.3")
		}
		fmt.Fprintf(out, "%s %.2f ratio\n", r.name, a/b)
	}
	return nil
}

// printLookups prints the lookup benchmark: per shape, N and case the
// nanoseconds of one run of switchyard's program and its ratios to the peer
// design and to the empty program, and for hits the floor program (the
// sockmap lookup and assignment every dispatcher does) and the ratio to
// it, all measured in turns in one process (n/a where the case or the peer design does not exist for the
// shape); per shape and N the kernel memory of the maps.
func printLookups(out io.Writer, order []string, med func(name, unit string) (float64, int, bool)) {
	said := false
	f := func(v float64) string { return strconv.FormatFloat(v, 'f', 1, 64) }
	for _, name := range order {
		if !strings.HasPrefix(name, lookupPrefix) {
			continue
		}
		if !said {
			said = true
			fmt.Fprintln(out, "# lookup: kernel ns per run (BPF_PROG_TEST_RUN); ratios of switchyard to the peer design, the empty program and (hits) the floor program, medians of runs in turns in one process")
		}
		key := strings.ToLower(name[:1]) + name[1:] // lookup/SHAPE/N/CASE
		rest := strings.TrimPrefix(name, lookupPrefix)
		if shapeN, ok := strings.CutSuffix(rest, memlockSuffix); ok {
			if v, _, ok := med(name, unitMemlock); ok {
				fmt.Fprintf(out, "dispatch_memlock/%s %s MiB\n", shapeN, f(v))
			}
			if v, _, ok := med(name, unitPeerLock); ok {
				fmt.Fprintf(out, "peer_memlock/%s %s MiB\n", shapeN, f(v))
			}
			continue
		}
		if _, _, ok := med(name, unitNA); ok {
			fmt.Fprintf(out, "%s n/a ns\n", key)
			fmt.Fprintf(out, "lookup_vs_peer/%s n/a ratio\n", rest)
			fmt.Fprintf(out, "lookup_vs_empty/%s n/a ratio\n", rest)
			continue
		}
		sy, _, ok := med(name, unitLookup)
		if !ok {
			continue
		}
		fmt.Fprintf(out, "%s %s ns\n", key, f(sy))
		if peer, _, ok := med(name, unitPeer); ok && peer > 0 {
			fmt.Fprintf(out, "lookup_peer/%s %s ns\n", rest, f(peer))
			fmt.Fprintf(out, "lookup_vs_peer/%s %.2f ratio\n", rest, sy/peer)
		} else {
			fmt.Fprintf(out, "lookup_vs_peer/%s n/a ratio\n", rest)
		}
		if empty, _, ok := med(name, unitEmpty); ok && empty > 0 {
			fmt.Fprintf(out, "lookup_vs_empty/%s %.2f ratio\n", rest, sy/empty)
		}
		if floor, _, ok := med(name, unitFloor); ok && floor > 0 {
			fmt.Fprintf(out, "lookup_floor/%s %s ns\n", rest, f(floor))
			fmt.Fprintf(out, "lookup_vs_floor/%s %.2f ratio\n", rest, sy/floor)
		}
	}
}

// parseLine reads a `go test -bench` result line.
func parseLine(line string) (string, map[string]float64, bool) {
	f := strings.Fields(line)
	if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
		return "", nil, false
	}
	name := strings.TrimPrefix(f[0], "Benchmark")
	if i := strings.LastIndex(name, "-"); i > 0 {
		if _, err := strconv.Atoi(name[i+1:]); err == nil {
			name = name[:i]
		}
	}
	m := map[string]float64{}
	for i := 2; i+1 < len(f); i += 2 {
		v, err := strconv.ParseFloat(f[i], 64)
		if err != nil {
			return "", nil, false
		}
		m[f[i+1]] = v
	}
	return name, m, true
}
